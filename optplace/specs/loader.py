"""Load a scenario from YAML: parse safely, validate, cross-check, and report every problem at once
as ``file:line: field.path: message``."""

from __future__ import annotations

import math
import os
import types
import typing
from pathlib import Path
from typing import Any, Iterable

from pydantic import BaseModel, ValidationError

from optplace.specs.errors import SpecError, SpecIssue
from optplace.infra.registry import OBJECTIVES
from optplace.specs.model import AdapterEntry, AdapterGroup, RegisteredKind, Scenario
from optplace.specs.profiles import Profile, UnknownProfile, load_profile_file, resolve_profile
from optplace.specs.yamlsafe import Located, Path_, SpecIssueError, dotted, parse_yaml, read_yaml

Problem = tuple[Path_, str]

# The twin holds every request of the window in memory (~20 bytes each, several copies while
# generating): beyond this a simulation would exhaust memory instead of failing with a message.
MAX_EXPECTED_REQUESTS = 50_000_000


def load_scenario(path: str | Path, allow_paths: Iterable[str | Path] = ()) -> Scenario:
    """Read, validate and cross-check a scenario file. Raises ``SpecError`` listing every problem."""
    try:
        located = read_yaml(path)
    except SpecIssueError as e:
        raise SpecError([e.issue]) from None
    return scenario_from_data(located, str(path), Path(path).resolve().parent, allow_paths)


def load_scenario_text(
    text: str, name: str = "<string>", base_dir: str | Path = ".", allow_paths: Iterable[str | Path] = ()
) -> Scenario:
    """Like ``load_scenario`` for YAML text (tests, stdin)."""
    try:
        located = parse_yaml(text, name)
    except SpecIssueError as e:
        raise SpecError([e.issue]) from None
    return scenario_from_data(located, name, Path(base_dir).resolve(), allow_paths)


def scenario_from_data(located: Located, name: str, base_dir: Path, allow_paths: Iterable[str | Path] = ()) -> Scenario:
    """Validate already-parsed data; problems are located with ``located.lines``."""
    try:
        sc = Scenario.model_validate(located.data)
    except ValidationError as e:
        raise SpecError(_issues(name, located, _pydantic_problems(e, located.data))) from None
    problems = semantic_issues(sc, base_dir, allow_paths)
    if problems:
        raise SpecError(_issues(name, located, problems))
    return sc


def _issues(name: str, located: Located, problems: list[Problem]) -> list[SpecIssue]:
    seen: dict[Path_, list[str]] = {}
    for path, msg in problems:
        msgs = seen.setdefault(path, [])
        if msg not in msgs:
            msgs.append(msg)
    issues = [SpecIssue(name, located.line_of(p), dotted(p), " or ".join(m)) for p, m in seen.items()]
    return sorted(issues, key=lambda i: i.line or 0)


# --- pydantic errors → (path, message) --------------------------------------------------------


def _pydantic_problems(err: ValidationError, raw: Any) -> list[Problem]:
    out: list[Problem] = []
    errors = err.errors(include_url=False)
    located = [(_data_path(e["loc"], raw)[0], e) for e in errors]
    for path, e in located:
        typ = e["type"]
        if typ == "too_short" and any(len(p) > len(path) and p[: len(path)] == path for p, _ in located):
            continue  # a list whose items failed: the item errors say it all
        if typ == "extra_forbidden":
            valid = _valid_keys(path[:-1], raw)
            hint = f" (valid keys: {', '.join(valid)})" if valid else ""
            out.append((path, f"unknown key {str(path[-1])!r}{hint}"))
        elif typ == "missing":
            out.append((path, "required field is missing"))
        elif typ == "union_tag_invalid" or typ == "literal_error":
            out.append((path, _clean(e["msg"]) + f" (got {_short(e.get('input'))})"))
        elif typ == "union_tag_not_found":
            out.append((path, _clean(e["msg"])))
        else:
            got = "" if typ.startswith(("value_error", "assertion")) else f" (got {_short(e.get('input'))})"
            out.append((path, _clean(e["msg"]) + got))
    return out


def _clean(msg: str) -> str:
    return msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")


def _short(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


def _data_path(loc: tuple, raw: Any) -> tuple[Path_, Any]:
    """Map a pydantic error location onto the raw data, dropping union tags and member names."""
    path: list[str | int] = []
    node = raw
    for k, part in enumerate(loc):
        last = k == len(loc) - 1
        if (
            isinstance(node, dict)
            and isinstance(part, str)
            and part in node
            and (
                last
                or isinstance(node[part], (dict, list))
                or not isinstance(loc[k + 1], str)
                or loc[k + 1] not in node
            )
        ):
            path.append(part)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            path.append(part)
            node = node[part]
        elif last and isinstance(part, str) and part.isidentifier():
            path.append(part)  # a missing field
            node = None
        # else: a union tag / member name ("group", "poisson", "str", "GpuSpec"…): not part of the data
    return tuple(path), node


def _valid_keys(path: Path_, raw: Any) -> list[str]:
    cls = _model_at(path, raw)
    if cls is None:
        return []
    return sorted(f.alias or n for n, f in cls.model_fields.items())


def _model_at(path: Path_, raw: Any) -> type[BaseModel] | None:
    ann: Any = Scenario
    node = raw
    for part in path:
        if isinstance(part, int):
            ann = _element(ann)
            node = node[part] if isinstance(node, list) and part < len(node) else None
            continue
        cls = _pick_model(ann, node)
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)):
            return None
        field = cls.model_fields.get(part) or next((f for f in cls.model_fields.values() if f.alias == part), None)
        if field is None:
            return None
        node = node.get(part) if isinstance(node, dict) else None
        # pydantic keeps Annotated metadata (e.g. RegisteredKind) beside the annotation: put it back
        ann = typing.Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
    cls = _pick_model(ann, node)
    return cls if isinstance(cls, type) and issubclass(cls, BaseModel) else None


def _element(ann: Any) -> Any:
    """The item annotation of a (possibly Optional/Annotated) tuple or list annotation."""
    origin = typing.get_origin(ann)
    if origin is typing.Annotated:
        return _element(typing.get_args(ann)[0])
    if origin in (tuple, list):
        return typing.get_args(ann)[0]
    if origin in (typing.Union, types.UnionType):
        for a in typing.get_args(ann):
            if typing.get_origin(a) in (tuple, list) or typing.get_origin(a) is typing.Annotated:
                item = _element(a)
                if item is not None:  # e.g. the list member of "all" | [names]
                    return item
    return None


def _pick_model(ann: Any, node: Any) -> Any:
    """The pydantic model class an annotation resolves to for this raw node (unions by kind/group,
    registered models by kind)."""
    origin = typing.get_origin(ann)
    if origin is typing.Annotated:
        reg = next((m.registry for m in ann.__metadata__ if isinstance(m, RegisteredKind)), None)
        if reg is not None:
            kind = node.get("kind") if isinstance(node, dict) else None
            return reg.get(kind).spec if isinstance(kind, str) and kind in reg else None
        return _pick_model(typing.get_args(ann)[0], node)
    if origin in (typing.Union, types.UnionType):
        models = [
            m
            for m in (_pick_model(a, node) for a in typing.get_args(ann))
            if isinstance(m, type) and issubclass(m, BaseModel)
        ]
        if isinstance(node, dict):
            if "kind" in node:
                for m in models:
                    kf = m.model_fields.get("kind")
                    if kf is not None and node["kind"] in typing.get_args(kf.annotation):
                        return m
            if AdapterGroup in models and AdapterEntry in models:
                return AdapterGroup if "group" in node else AdapterEntry
        return models[0] if len(models) == 1 else None
    return ann


# --- cross-field checks -----------------------------------------------------------------------


def semantic_issues(sc: Scenario, base_dir: Path, allow_paths: Iterable[str | Path] = ()) -> list[Problem]:
    """Checks that involve several fields, files, or the hardware profile."""
    out: list[Problem] = []
    roots = [base_dir] + [Path(p).resolve() for p in allow_paths]
    if (sc.gpu is None) == (sc.pool is None):
        out.append((("gpu",), "give exactly one of 'gpu' (one GPU type) or 'pool' (a list of GPU types)"))
    if sc.pool is not None:
        if not sc.pool:
            out.append((("pool",), "pool is empty: list at least one {gpu, count, cost_per_hour}"))
        names = [p.gpu_name for p in sc.pool]
        for i, n in enumerate(names):
            if n in names[:i]:
                out.append((("pool", i, "gpu"), f"GPU type {n!r} listed twice in the pool"))
    if sc.profile is not None and sc.pool is not None:
        out.append((("profile",), "with a pool, give 'profile' per pool entry instead"))
    out += _file_problems(sc, base_dir, roots)
    out += _length_problems(sc)
    sv = sc.serving
    if sv.max_num_batched_tokens < sv.max_num_seqs:
        out.append(
            (
                ("serving", "max_num_batched_tokens"),
                f"vLLM requires max_num_batched_tokens "
                f"({sv.max_num_batched_tokens}) >= max_num_seqs ({sv.max_num_seqs}); raise it or lower max_num_seqs",
            )
        )

    profiles: dict[str, Profile] = {}
    for i, pe in enumerate(sc.gpu_types() if (sc.gpu is None) != (sc.pool is None) else ()):
        where = ("pool", i, "gpu") if sc.pool is not None else ("gpu",)
        try:
            if pe.profile is not None:
                prof = load_profile_file(_resolve(pe.profile, base_dir))
            else:
                prof = resolve_profile(sc.model, pe.gpu)
        except UnknownProfile as e:
            model_unknown = "unknown model" in str(e)
            out.append((("model",) if model_unknown else where, str(e)))
            continue
        except (OSError, ValueError, RecursionError) as e:  # RecursionError: deeply nested JSON
            out.append(
                (
                    (*where[:-1], "profile") if sc.pool is not None else ("profile",),
                    f"cannot load profile: {' '.join(str(e).split())[:200]}",
                )
            )
            continue
        profiles[pe.gpu_name] = prof
    max_rank = min((p.max_lora_rank for p in profiles.values()), default=None)

    seen: dict[str, int] = {}
    for i, it in enumerate(sc.adapters):
        if isinstance(it, AdapterGroup):
            if (it.rate_rps is None) == (it.total_rate_rps is None):
                out.append(
                    (
                        ("adapters", i),
                        f"group {it.group!r}: give exactly one of rate_rps (each adapter) or total_rate_rps (shared)",
                    )
                )
            if it.popularity is not None and it.total_rate_rps is None:
                out.append((("adapters", i, "popularity"), "popularity needs total_rate_rps"))
        if max_rank is not None and it.rank > max_rank:
            out.append((("adapters", i, "rank"), f"rank {it.rank} exceeds the profile's supported maximum {max_rank}"))
    expanded = sc.adapter_list()
    owner = _owners(sc)
    for k, a in enumerate(expanded):
        if a.name in seen:
            out.append(
                (
                    ("adapters", owner[k]),
                    f"duplicate adapter name {a.name!r} (first at adapters[{owner[seen[a.name]]}])",
                )
            )
        else:
            seen[a.name] = k
    expected = math.fsum(a.rate_rps for a in expanded) * sc.workload.duration_s
    if expected > MAX_EXPECTED_REQUESTS:
        out.append(
            (
                ("workload", "duration_s"),
                f"the window holds ~{expected:.3g} expected requests (sum of rate_rps "
                f"x duration_s {sc.workload.duration_s:g}); the twin simulates at most {MAX_EXPECTED_REQUESTS:,}: "
                "shorten duration_s",
            )
        )
    out += _slo_problems(sc)
    if sc.placement is not None and expanded:
        out += _placement_problems(sc, {a.name: a for a in expanded})
    if OBJECTIVES.get(sc.objective).fixed_budget and sc.solver.max_gpus is None and sc.pool is None:
        out.append((("solver", "max_gpus"), f"objective {sc.objective} needs a GPU budget: set solver.max_gpus"))
    return out


def _length_problems(sc: Scenario) -> list[Problem]:
    """A length model whose requested means its filters cannot reach (e.g. a mean output longer than
    max_total_tokens allows) is refused here, not when the first workload is drawn."""
    from optplace.infra.registry import LENGTHS

    spec: Any = sc.workload.lengths  # every registered length spec has a `kind`
    try:
        LENGTHS.get(spec.kind).expected(spec)
    except ValueError as e:
        return [(("workload", "lengths"), str(e))]
    return []


def _slo_problems(sc: Scenario) -> list[Problem]:
    """The SLO's warm-up inside the window; adapters' own bounds only where they are read."""
    out: list[Problem] = []
    slo = sc.slo
    if slo is not None and slo.warmup_s is not None and slo.warmup_s >= sc.workload.duration_s:
        out.append(
            (
                ("slo", "warmup_s"),
                f"warmup_s {slo.warmup_s:g} must be shorter than the window (workload.duration_s "
                f"{sc.workload.duration_s:g})",
            )
        )
    if slo is not None and slo.headroom and not sc.rates_scalable():
        # only a by_rate trace follows the adapters' rates, which the headroom check multiplies
        out.append(
            (
                ("slo", "headroom"),
                "headroom scales the adapters' rates; this trace replays at a fixed scale (set "
                "workload.arrivals.assignment: by_rate without scale, or drop headroom)",
            )
        )
    for i, it in enumerate(sc.adapters):
        if it.slo is None:
            continue
        if not slo is not None:
            out.append((("adapters", i, "slo"), "an adapter's own slo needs the scenario's `slo:` (it says none)"))
        elif slo.scope != "adapter":
            out.append((("adapters", i, "slo"), "an adapter's own slo needs slo.scope: adapter (it is gpu)"))
    return out


def _owners(sc: Scenario) -> list[int]:
    owner: list[int] = []
    for i, it in enumerate(sc.adapters):
        owner += [i] * (it.count if isinstance(it, AdapterGroup) else 1)
    return owner


#: How far the shares of a replicated adapter may sum from 1 (hand-written thirds: 0.333 x 3).
SHARE_TOLERANCE = 1e-3


def _placement_problems(sc: Scenario, by_name: dict[str, Any]) -> list[Problem]:
    out: list[Problem] = []
    assert sc.placement is not None
    types = {p.gpu_name for p in sc.gpu_types()}
    # adapter -> its entries: (GPU, position on it, share or None for a bare name)
    entries: dict[str, list[tuple[int, int, float | None]]] = {}
    for g, pe in enumerate(sc.placement):
        base = ("placement", g)
        if pe.gpu_type is not None and pe.gpu_type not in types:
            out.append(
                ((*base, "gpu_type"), f"unknown GPU type {pe.gpu_type!r} (spec has: {', '.join(sorted(types))})")
            )
        if pe.adapters == "all":
            if len(sc.placement) > 1:
                out.append(((*base, "adapters"), "'all' is only valid when the placement has one GPU"))
            items: list[tuple[str, float | None]] = [(n, None) for n in by_name]
        else:
            items = [(a, None) if isinstance(a, str) else (a.name, float(a.share)) for a in pe.adapters]
        if not items:
            out.append(((*base, "adapters"), "a GPU needs at least one adapter"))
        for j, (n, share) in enumerate(items):
            here = entries.setdefault(n, [])
            if n not in by_name:
                out.append(((*base, "adapters", j), f"unknown adapter {n!r}"))
            elif any(h[0] == g for h in here):
                out.append(((*base, "adapters", j), f"adapter {n!r} is listed twice on this GPU"))
            elif share is not None and not share > 0:
                out.append(((*base, "adapters", j, "share"), f"a share must be > 0 (got {share:g})"))
            elif here and share is None and all(h[2] is None for h in here):
                out.append(((*base, "adapters", j), f"adapter {n!r} is already placed on placement[{here[0][0]}]"))
            else:
                here.append((g, j, share))
        if items and pe.max_loras > len(items):
            out.append(
                ((*base, "max_loras"), f"max_loras {pe.max_loras} exceeds the {len(items)} adapters placed on this GPU")
            )
        if pe.max_cpu_loras is not None and pe.max_cpu_loras < pe.max_loras:
            out.append(
                (
                    (*base, "max_cpu_loras"),
                    f"max_cpu_loras {pe.max_cpu_loras} is below max_loras "
                    f"{pe.max_loras} (vLLM requires max_cpu_loras >= max_loras)",
                )
            )
    for n, here in entries.items():
        total = math.fsum(1.0 if s is None else s for _, _, s in here)
        if here and n in by_name and abs(total - 1.0) > SHARE_TOLERANCE:
            g, j, s = here[-1]
            where = ("placement", g, "adapters", j) + (("share",) if s is not None else ())
            gpus = ", ".join(f"placement[{h[0]}]" for h in here)
            out.append((where, f"the shares of adapter {n!r} sum to {total:.6g} over {gpus}; they must sum to 1"))
    missing = [n for n in by_name if n not in entries]
    if missing:
        shown = ", ".join(repr(n) for n in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        out.append(
            (
                ("placement",),
                f"{len(missing)} adapter(s) on no GPU: {shown} (every adapter needs a GPU, or replicas whose "
                "shares sum to 1)",
            )
        )
    return out


def _resolve(rel: str, base_dir: Path) -> Path:
    p = Path(rel)
    return (p if p.is_absolute() else base_dir / p).resolve()


def _file_problems(sc: Scenario, base_dir: Path, roots: list[Path]) -> list[Problem]:
    out: list[Problem] = []
    refs: list[tuple[Path_, str]] = []
    # A ``path`` of an arrival or length model (any registered one) names a file next to the spec.
    for key in ("arrivals", "lengths"):
        path = getattr(getattr(sc.workload, key), "path", None)
        if isinstance(path, str):
            refs.append((("workload", key, "path"), path))
    if sc.profile is not None:
        refs.append((("profile",), sc.profile))
    for i, pe in enumerate(sc.pool or ()):
        if pe.profile is not None:
            refs.append((("pool", i, "profile"), pe.profile))
    for where, rel in refs:
        p = _resolve(rel, base_dir)
        if not any(p == r or r in p.parents for r in roots):
            out.append((where, f"path {rel!r} leaves the spec's folder; pass --allow-path DIR to permit it"))
        elif not p.is_file():
            out.append((where, f"file not found: {p}"))
        elif not os.access(p, os.R_OK):
            out.append((where, f"file not readable: {p}"))
    return out


def resolve_spec_path(sc: Scenario, rel: str, base_dir: Path) -> Path:
    """Absolute path of a file the spec refers to (already checked by ``load_scenario``)."""
    return _resolve(rel, base_dir)
