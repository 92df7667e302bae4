"""What `solve --out` writes, and loading plans back for `validate`.

``--out DIR`` holds: ``plan.json`` (the ``solve --json`` document, self-contained: it embeds the
scenario), ``twin.json`` (the twin's per-GPU report), ``solver.log``, ``deploy/`` (per-GPU
``vllm serve`` commands, routes, router config, launcher) and ``report.html``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optplace.infra.executors import ExecutorSpec
from optplace.specs import Scenario, SpecError
from optplace.specs.loader import semantic_issues
from optplace.twin.simulate import GpuConfig, PlanSimulator, Progress, SimReport, run_jobs, slo_json

from optplace.infra.outputs import write_json
from optplace.pipeline import SolveReport, executor_of


def write_solve_outputs(folder: Path, rep: SolveReport, doc: dict[str, Any], reproducible: bool = False) -> None:
    """Write every artefact of a solve into ``folder`` (a fresh temporary folder); ``reproducible`` zeroes
    the report's solve times as ``doc``'s are."""
    from optplace.app.report_html import solve_report_html
    from optplace.deploy.artefacts import DeployOptions, build_deployment, write_deployment

    write_json(folder / "plan.json", doc)
    if rep.validation is not None:
        write_json(folder / "twin.json", rep.validation.to_json())
    log = list(rep.plan.log) + [f"repair: {a}" for a in rep.repairs]
    (folder / "solver.log").write_text("\n".join(log) + "\n", encoding="utf-8")
    write_deployment(build_deployment(doc, DeployOptions()), folder / "deploy")
    (folder / "report.html").write_text(solve_report_html(rep, reproducible), encoding="utf-8")


class PlanLoadError(Exception):
    """A plan or spec given to `validate` cannot be used; ``lines`` are the one-line messages."""

    def __init__(self, lines: Sequence[str]):
        super().__init__("\n".join(lines))
        self.lines = list(lines)


@dataclass(frozen=True, slots=True)
class PlanItem:
    """One plan to validate: its scenario, the folder its paths are relative to, and its GPUs."""

    scenario: Scenario
    base_dir: Path
    gpus: tuple[GpuConfig, ...]


def load_plan_or_spec(path: Path, allow_paths: Iterable[Path] = ()) -> PlanItem:
    """A plan JSON written by `solve` (it embeds its scenario) or a YAML spec with a `placement:`."""
    from optplace.specs import load_scenario
    from optplace.twin.simulate import placement_of

    if path.suffix.lower() == ".json":
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            scen = dict(doc["scenario"])
            scen["placement"] = [
                {
                    "gpu_type": g.get("gpu_type"),
                    "max_loras": g["max_loras"],
                    "max_cpu_loras": g.get("max_cpu_loras"),
                    "adapters": g["adapters"],
                }
                for g in doc["placement"]
            ]
            base = Path(doc.get("spec_dir") or path.resolve().parent)
            sc = Scenario.model_validate(scen)
        except (OSError, ValueError, KeyError, TypeError, RecursionError) as e:  # RecursionError: nested JSON
            raise PlanLoadError(
                [f"{path}: not a plan written by `optplace solve` ({' '.join(str(e).split())[:200]})"]
            ) from None
        problems = semantic_issues(sc, base, allow_paths)
        # spec_dir comes from the plan file itself: files under it are only trusted when it is the
        # plan's own folder or a folder given with --allow-path (otherwise any plan could claim "/")
        roots = [path.resolve().parent] + [Path(a).resolve() for a in allow_paths]
        b = base.resolve()
        if _file_refs(sc) and not any(b == r or r in b.parents for r in roots):
            problems.append(
                (
                    ("spec_dir",),
                    f"the plan's files are relative to {str(base)!r}, outside the plan's "
                    f"folder; pass --allow-path {base} to permit it",
                )
            )
        if problems:
            raise PlanLoadError([f"{path}: {'.'.join(map(str, p))}: {m}" for p, m in problems])
    else:
        try:
            sc = load_scenario(path, allow_paths=allow_paths)
        except SpecError as e:
            raise PlanLoadError(e.lines()) from None
        if sc.placement is None:
            raise PlanLoadError([f"{path}: placement: the spec has no placement to validate"])
        base = path.resolve().parent
    return PlanItem(sc, base, placement_of(sc))


def _file_refs(sc: Scenario) -> bool:
    """Does the scenario read files (traces, profiles)?"""
    from optplace.specs.model import TraceArrivals, TraceLengths

    return (
        isinstance(sc.workload.arrivals, TraceArrivals)
        or isinstance(sc.workload.lengths, TraceLengths)
        or sc.profile is not None
        or any(p.profile is not None for p in sc.pool or ())
    )


def validate_many(
    items: Sequence[PlanItem], workers: int | None = None, progress: Progress | None = None
) -> list[SimReport]:
    """Simulate every GPU of every plan in one parallel fan-out; one report per plan (``progress`` is told
    as each GPU finishes)."""
    t0 = time.perf_counter()
    vals = [PlanSimulator(it.scenario, it.base_dir, ExecutorSpec()) for it in items]
    jobs, owner = [], []
    for k, (it, v) in enumerate(zip(items, vals)):
        for i, gp in enumerate(it.gpus):
            jobs.append(v.job(gp, i))
            owner.append(k)
    spec = executor_of(items[0].scenario, workers) if items else ExecutorSpec()
    reports = run_jobs(jobs, executor=spec, progress=progress)
    wall = time.perf_counter() - t0
    out = []
    for k, it in enumerate(items):
        gpus = tuple(r for r, o in zip(reports, owner) if o == k)
        c = it.scenario.constraints
        out.append(
            SimReport(
                scenario=it.scenario.name,
                seed=it.scenario.seed,
                duration_s=it.scenario.workload.duration_s,
                gpus=gpus,
                sim_wall_s=wall,
                simulated_s=it.scenario.workload.duration_s * len(gpus),
                max_throughput_loss=c.max_throughput_loss,
                max_adapter_loss=c.max_adapter_loss,
                slo=slo_json(it.scenario),
            )
        )
    return out
