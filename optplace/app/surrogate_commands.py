"""``optplace surrogate …`` commands (a typer sub-app; the main CLI mounts it as ``surrogate``).

Thin: parse options, delegate to :mod:`optplace.surrogate.execution` (sweeps, replicates),
:mod:`optplace.surrogate.training` (train, ship) and :mod:`optplace.surrogate.recipe` (build), print a
short summary.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

app = typer.Typer(help="Capacity surrogates: twin sweeps and LightGBM training.", no_args_is_help=True)


@contextmanager
def _refusals() -> Iterator[None]:
    """A sweep or recipe that cannot be resumed or built is the user's input problem: one line, exit 2."""
    try:
        yield
    except (ValueError, OSError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None


def _executor(kind: str, workers: int | None, address: str | None, local: Any, ray: Any) -> Any:
    """The sweep executor the options name (``local`` with ``workers`` processes, or ``ray`` at ``address``)."""
    if kind not in ("local", "ray"):
        raise typer.BadParameter(f"--executor must be local or ray, got {kind!r}")
    if kind == "ray":
        return ray(address=address, num_cpus=workers)
    return local(workers) if workers else local()


@app.command()
def sweep(
    profile: Annotated[str, typer.Argument(help="Bundled profile name (model@gpu) or a profile JSON path.")],
    out: Annotated[Path, typer.Option("--out", help="Dataset path without suffix (writes .csv and .json).")],
    points: Annotated[int, typer.Option(help="Sobol points (pass 1).")] = 1500,
    chains: Annotated[int, typer.Option(help="Boundary bisection chains (pass 2).")] = 100,
    chain_steps: Annotated[int, typer.Option(help="Bisection steps per chain.")] = 5,
    duration_s: Annotated[float, typer.Option(help="Simulated window per configuration [s].")] = 3600.0,
    seed: Annotated[int, typer.Option(help="Sweep seed (rows are a function of seed and index).")] = 0,
    executor: Annotated[str, typer.Option(help="local | ray")] = "local",
    workers: Annotated[Optional[int], typer.Option(help="Local processes (default: all cores).")] = None,
    address: Annotated[Optional[str], typer.Option(help="Ray cluster address (with --executor ray).")] = None,
) -> None:
    """Run or resume a twin sweep for a profile."""
    from optplace.surrogate.design import SweepDesign
    from optplace.surrogate.execution import LocalExecutor, RayExecutor, run_sweep
    from optplace.surrogate.twin_eval import TwinEvaluator

    ex = _executor(executor, workers, address, LocalExecutor, RayExecutor)
    design = SweepDesign(n_points=points, n_chains=chains, chain_steps=chain_steps, duration_s=duration_s)
    with _refusals():
        res = run_sweep(TwinEvaluator(profile), out, design, seed=seed, executor=ex)
    typer.echo(f"{res.csv_path}: {res.rows_total} rows ({res.rows_new} new) in {res.wall_s:.0f} s")


@app.command()
def replicate(
    source: Annotated[Path, typer.Argument(help="A finished sweep (path without suffix) to re-evaluate.")],
    out: Annotated[Path, typer.Option("--out", help="Dataset path without suffix (writes .csv and .json).")],
    salt: Annotated[int, typer.Option(help="Replicate number ≥ 1 (sets the other twin seeds).")] = 1,
    workers: Annotated[Optional[int], typer.Option(help="Local processes (default: all cores).")] = None,
    subset: Annotated[
        str,
        typer.Option(
            help="all | noisy (only saturated rows with fewer slots than adapters "
            "and rows near the starvation rule) | boundary (only rows within "
            "6 loss points of the starvation rule)."
        ),
    ] = "all",
) -> None:
    """Re-run every configuration of a twin sweep with other twin seeds (for seed-averaged labels)."""
    from optplace.surrogate.execution import LocalExecutor, run_replicate
    from optplace.surrogate.twin_eval import TwinEvaluator

    prov = json.loads(source.with_suffix(".json").read_text())
    ev = TwinEvaluator(prov["evaluator"]["profile"])
    with _refusals():
        res = run_replicate(
            ev, source, out, salt=salt, executor=LocalExecutor(workers) if workers else LocalExecutor(), subset=subset
        )
    typer.echo(f"{res.csv_path}: {res.rows_total} rows ({res.rows_new} new) in {res.wall_s:.0f} s")


@app.command()
def train(
    datasets: Annotated[
        list[Path],
        typer.Argument(
            help="Dataset path(s) written by `surrogate sweep` (.csv/.json); "
            "`surrogate replicate` outputs of a listed sweep are pooled "
            "into it (labels: mean over each row's twin seeds)."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="Model directory.")],
    seed: Annotated[int, typer.Option(help="Training seed.")] = 0,
    holdout: Annotated[
        Optional[list[Path]],
        typer.Option(
            help="Score on this sweep (another sweep seed) instead of "
            "a random 20 % of the groups; repeat for several "
            "(scored as one set)."
        ),
    ] = None,
    holdout_replicate: Annotated[
        Optional[list[Path]],
        typer.Option(
            help="`surrogate replicate` re-runs of the "
            "held-out sweep(s): labels become seed means "
            "(each pooled into the sweep it names)."
        ),
    ] = None,
) -> None:
    """Train the throughput / ITL / TTFT / starvation models on sweeps; print held-out metrics."""
    from optplace.surrogate.training import train as _train

    rep = _train(datasets, out, seed=seed, holdout=holdout or None, holdout_replicates=holdout_replicate or ())
    typer.echo(
        json.dumps(
            {"out": str(rep.out_dir), "n_train": rep.n_train, "n_test": rep.n_test, "metrics": rep.metrics}, indent=2
        )
    )


@app.command()
def ship(
    profile: Annotated[str, typer.Argument(help="Bundled profile name (model@gpu).")],
    datasets: Annotated[
        list[Path],
        typer.Argument(help="Twin sweep(s) of that profile, and replicates of them (pooled: seed-mean labels)."),
    ],
    seed: Annotated[int, typer.Option(help="Training seed.")] = 0,
    holdout: Annotated[
        Optional[list[Path]], typer.Option(help="Held-out twin sweep (another sweep seed); repeat for several.")
    ] = None,
    holdout_replicate: Annotated[Optional[list[Path]], typer.Option(help="Their seed replicates.")] = None,
    note: Annotated[Optional[str], typer.Option(help="Free-text provenance note stored with the models.")] = None,
) -> None:
    """Train on twin sweeps of a bundled profile and write the models as package data (maintainers)."""
    from optplace.surrogate.training import ship as _ship

    rep = _ship(
        datasets, profile, seed=seed, holdout=holdout or None, holdout_replicates=holdout_replicate or (), note=note
    )
    typer.echo(
        json.dumps(
            {"out": str(rep.out_dir), "n_train": rep.n_train, "n_test": rep.n_test, "metrics": rep.metrics}, indent=2
        )
    )


@app.command()
def build(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML (the shipped ones: optplace/surrogate/recipes/).")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the model files (<profile>.*, as shipped).")],
    sweeps: Annotated[
        Optional[Path],
        typer.Option(
            help="Folder of the sweep files, reused or resumed when their provenance matches (default: OUT/sweeps)."
        ),
    ] = None,
    executor: Annotated[str, typer.Option(help="local | ray")] = "local",
    workers: Annotated[Optional[int], typer.Option(help="Local processes (default: all cores).")] = None,
    address: Annotated[Optional[str], typer.Option(help="Ray cluster address (with --executor ray).")] = None,
    holdout: Annotated[
        bool,
        typer.Option(
            "--holdout/--no-holdout", help="Run and score the held-out sweeps (the model files do not depend on them)."
        ),
    ] = True,
) -> None:
    """Build a surrogate from its recipe end to end: sweeps, replicates, dataset, training, threshold, files."""
    from optplace.surrogate.execution import LocalExecutor, RayExecutor
    from optplace.surrogate.recipe import build_recipe, load_recipe
    from optplace.surrogate.slo_model import build_slo_recipe, is_slo_recipe, load_slo_recipe

    with _refusals():
        if is_slo_recipe(_yaml_doc(recipe)):
            # SLO recipes (recipes/slo/) run their sweeps in this process: one twin run per row, in order,
            # because each boundary chain's next load depends on the verdict before it
            srec = load_slo_recipe(recipe)
            typer.echo(f"SLO recipe {recipe} (hash {srec.hash}) for {srec.profile}")
            srep = build_slo_recipe(srec, out, sweeps, with_holdout=holdout, on_event=typer.echo)
            typer.echo(json.dumps({"out": str(srep.model_json), "metrics": srep.metrics}, indent=2))
            return
        rec = load_recipe(recipe)
    ex = _executor(executor, workers, address, LocalExecutor, RayExecutor)
    typer.echo(f"recipe {recipe} (hash {rec.hash}) for {rec.profile}: {len(rec.steps(holdout))} sweep steps")
    with _refusals():
        rep = build_recipe(rec, out, sweeps, executor=ex, with_holdout=holdout, on_event=typer.echo)
    typer.echo(
        json.dumps({"out": str(rep.model_json), "twin_runs_new": rep.rows_new, "metrics": rep.metrics}, indent=2)
    )


def _yaml_doc(path: Path) -> Any:
    """A YAML file's parsed content (None when it cannot be read: the recipe loader then says why)."""
    import yaml

    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
