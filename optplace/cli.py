"""The ``optplace`` command line: parse options, delegate, render. Exit codes: 0 ok, 1 infeasible or
validation failed, 2 bad input, 3 internal error."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from optplace.infra.text import count

EXIT_OK, EXIT_FAIL, EXIT_INPUT, EXIT_INTERNAL = 0, 1, 2, 3

app = typer.Typer(
    name="optplace",
    help="Place many LoRA adapters on few vLLM GPUs, and check the plan with a digital twin of vLLM.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _console(stderr: bool = False):
    from rich.console import Console

    import os

    stream = sys.stderr if stderr else sys.stdout
    # A terminal (or an explicit COLUMNS) sets the width; pipes and CI logs get a wide, fixed layout
    # instead of rich's 80-column fallback.
    width = None if stream.isatty() or os.environ.get("COLUMNS", "").isdigit() else 160
    return Console(stderr=stderr, highlight=False, soft_wrap=True, width=width)


class _Status:
    """A spinner, a one-line message and the elapsed time on stderr while a long step runs (solving,
    simulating, validating); ``update`` replaces the message. Nothing at all is drawn when stderr is
    not a terminal, so pipes, CI logs and --json output never see it."""

    def __init__(self, message: str) -> None:
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        err = _console(stderr=True)
        self.message = message
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=err,
            transient=True,
            disable=not err.is_terminal,
        )

    def __enter__(self) -> "_Status":
        self.progress.start()
        self.task = self.progress.add_task(self.message, total=None)
        return self

    def update(self, message: str) -> None:
        self.progress.update(self.task, description=message)

    def count(self, done: int, total: int) -> None:
        """The twin's progress: ``done`` of ``total`` GPU simulations finished, after the first message."""
        self.progress.update(self.task, description=f"{self.message}: {done}/{total} simulated")

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()


def _status(message: str) -> _Status:
    """See :class:`_Status`."""
    return _Status(message)


def _fail_input(lines: list[str]) -> typer.Exit:
    err = _console(stderr=True)
    for line in lines:
        err.print(f"error: {line}", markup=False)
    return typer.Exit(EXIT_INPUT)


AllowPath = Annotated[
    Optional[list[Path]],
    typer.Option("--allow-path", help="Folder that spec paths may refer into, besides the spec's own."),
]


@app.command()
def check(
    specs: Annotated[list[Path], typer.Argument(help="Scenario YAML files.")],
    allow_path: AllowPath = None,
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Validate scenario files; print every problem as file:line: field: message."""
    from optplace.app.render import slo_summary
    from optplace.specs import SpecError, load_scenario
    from optplace.twin.simulate import slo_json

    results: list[dict[str, Any]] = []
    bad: list[str] = []
    for spec in specs:
        try:
            sc = load_scenario(spec, allow_paths=allow_path or ())
        except SpecError as e:
            bad += e.lines()
            results.append({"spec": str(spec), "ok": False, "errors": e.lines()})
            continue
        ad = sc.adapter_list()
        results.append(
            {
                "spec": str(spec),
                "ok": True,
                "name": sc.name,
                "adapters": len(ad),
                "model": sc.model_name,
                "gpu_types": [p.gpu_name for p in sc.gpu_types()],
                "objective": sc.objective,
                "slo": slo_json(sc),
            }
        )
    if json_out:
        print(json.dumps({"specs": results}, indent=2))
    else:
        out = _console()
        for r in results:
            if r["ok"]:
                out.print(
                    f"ok  {r['spec']}: {r['name']} — {r['adapters']} adapters, {r['model']} on "
                    f"{', '.join(r['gpu_types'])}, objective {r['objective']}; SLO: {slo_summary(r['slo'])}",
                    markup=False,
                )
    if bad:
        raise _fail_input([] if json_out else bad)


def _load_or_exit(spec: Path, allow_path: list[Path] | None):
    from optplace.specs import SpecError, load_scenario

    try:
        return load_scenario(spec, allow_paths=allow_path or ())
    except SpecError as e:
        raise _fail_input(e.lines()) from None


JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print the result as JSON (stable keys, documented in docs/json-contracts.md).")
]
Wide = Annotated[
    bool,
    typer.Option("--wide", help="Terminal table with every column (default: a compact table that fits 80 columns)."),
]
Reproducible = Annotated[
    bool,
    typer.Option("--reproducible", help="Zero wall-clock fields so the same spec and seed give byte-identical JSON."),
]
Workers = Annotated[
    Optional[int], typer.Option("--workers", min=1, help="Parallel GPU simulations (default: number of cores).")
]


@app.command()
def simulate(
    spec: Annotated[Path, typer.Argument(help="Scenario YAML with a `placement:`.")],
    json_out: JsonOpt = False,
    reproducible: Reproducible = False,
    workers: Workers = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Override the spec's seed.")] = None,
    allow_path: AllowPath = None,
    wide: Wide = False,
) -> None:
    """Simulate the spec's placement with the twin (one vLLM engine per GPU, GPUs in parallel).

    Exit code 1 when a GPU is starved, fails to start, or misses the scenario's SLO."""
    sc = _load_or_exit(spec, allow_path)
    if sc.placement is None:
        raise _fail_input(
            [f"{spec}: placement: the spec has no placement to simulate (add `placement:` or use `optplace solve`)"]
        )
    from optplace.twin.simulate import placement_of, simulate_plan

    plan = placement_of(sc)
    with _status(f"simulating {count(len(plan), 'GPU')} in the twin") as status:
        rep = simulate_plan(
            sc, plan, spec.resolve().parent, workers=workers or sc.solver.workers, seed=seed, progress=status.count
        )
    if json_out:
        print(json.dumps(rep.to_json(reproducible=reproducible), indent=2))
    else:
        from optplace.app.render import render_sim_report

        render_sim_report(_console(), rep, wide=wide)
    if not rep.ok:
        raise typer.Exit(EXIT_FAIL)


OutDir = Annotated[
    Optional[Path],
    typer.Option("--out", help="Write plan.json, twin.json, solver.log, deploy/ and report.html into this folder."),
]
Force = Annotated[bool, typer.Option("--force", help="Replace a non-empty --out folder.")]


@app.command()
def solve(
    spec: Annotated[Path, typer.Argument(help="Scenario YAML.")],
    json_out: JsonOpt = False,
    out: OutDir = None,
    force: Force = False,
    reproducible: Reproducible = False,
    strategy: Annotated[Optional[str], typer.Option("--strategy", help="Override solver.strategy.")] = None,
    no_validate: Annotated[bool, typer.Option("--no-validate", help="Skip the twin validation.")] = False,
    compare: Annotated[
        bool,
        typer.Option(
            "--compare",
            help="Also solve with every other strategy and check "
            "each plan in the twin (a table, the JSON's "
            "'comparison', report.html).",
        ),
    ] = False,
    workers: Workers = None,
    allow_path: AllowPath = None,
    wide: Wide = False,
    no_headroom: Annotated[
        bool,
        typer.Option(
            "--no-headroom",
            help="Skip the headroom search (how much more load each GPU takes before the twin finds "
            "it failing; a few twin runs per GPU).",
        ),
    ] = False,
) -> None:
    """Find a placement (which adapter on which GPU, with which vLLM flags), validate it in the twin,
    repair what starves or misses the SLO, and report. Exit 1 when infeasible or when the twin still
    finds starvation or an SLO miss (in the chosen plan; ``--compare`` rows are for information)."""
    import time

    from optplace.infra.outputs import OutputExists, check_target

    started = time.monotonic()  # solver.time_limit_s also covers reading the spec
    sc = _load_or_exit(spec, allow_path)
    if strategy is not None:
        from optplace.infra.registry import STRATEGIES

        if strategy not in STRATEGIES:
            raise _fail_input([f"--strategy: {STRATEGIES.unknown(strategy)}"])
    if compare and no_validate:
        raise _fail_input(["--compare: checks every strategy's plan in the twin; it cannot go with --no-validate"])
    if out is not None:
        try:
            check_target(out, force)
        except OutputExists as e:
            raise _fail_input([str(e)]) from None
    from optplace.pipeline import solve_scenario
    from optplace.solver.problem import Infeasible, TimeLimitReached

    err = _console(stderr=True)
    try:
        with _status("solving…") as status:
            rep = solve_scenario(
                sc,
                spec.resolve().parent,
                strategy=strategy,
                validate=not no_validate,
                workers=workers,
                on_event=status.update,
                started=started,
                compare=compare,
                measure_headroom=not no_headroom,
            )
    except TimeLimitReached as e:
        err.print(f"time limit: {e}", markup=False)
        raise typer.Exit(EXIT_FAIL) from None
    except Infeasible as e:
        err.print(f"infeasible: {e}" + (f" (binding: {e.constraint})" if e.constraint else ""), markup=False)
        raise typer.Exit(EXIT_FAIL) from None
    doc = rep.to_json(reproducible=reproducible)
    if out is not None:
        from optplace.infra.outputs import atomic_dir
        from optplace.app.reporting import write_solve_outputs

        with atomic_dir(out, force=force) as tmp:
            write_solve_outputs(tmp, rep, doc, reproducible)
    if json_out:
        print(json.dumps(doc, indent=2))
    else:
        from optplace.app.render import render_solve_report

        render_solve_report(_console(), rep, wide=wide)
        if out is not None:
            _console().print(f"wrote {out}/ (plan.json, twin.json, solver.log, deploy/, report.html)", markup=False)
    if not rep.ok:
        raise typer.Exit(EXIT_FAIL)


@app.command()
def validate(
    files: Annotated[
        list[Path], typer.Argument(help="Plan JSON files (from solve --json / --out) or specs with a placement.")
    ],
    engine: Annotated[str, typer.Option("--engine", help="twin (default) or vllm.")] = "twin",
    json_out: JsonOpt = False,
    reproducible: Reproducible = False,
    workers: Workers = None,
    allow_path: AllowPath = None,
    wide: Wide = False,
    launch: Annotated[bool, typer.Option("--launch", help="vllm: start one server per GPU from the plan.")] = False,
    endpoints: Annotated[
        Optional[Path], typer.Option("--endpoints", help="vllm: routes.json of running servers (optplace deploy).")
    ] = None,
    router: Annotated[
        bool,
        typer.Option(
            "--router",
            help="vllm: send every request through the built-in router (optplace vllm router) over the plan's "
            "routes, replicas split by its weighted round robin, instead of to the replica the twin routed it to.",
        ),
    ] = False,
    window: Annotated[
        Optional[float],
        typer.Option("--window", help="vllm: replay this many seconds (default: the scenario's window)."),
    ] = None,
    out: Annotated[
        Optional[Path],
        typer.Option("--out", help="vllm: write real.json, twin.json, comparison.json, run.json and logs here."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="vllm: replace a non-empty --out folder.")] = False,
    model: Annotated[Optional[str], typer.Option("--model", help="vllm --launch: model folder/id to serve.")] = None,
    adapters_dir: Annotated[
        Optional[Path], typer.Option("--adapters-dir", help="vllm --launch: one folder per adapter.")
    ] = None,
    make_adapters: Annotated[
        bool, typer.Option("--make-adapters", help="vllm --launch: write seeded dummy adapters for missing ones.")
    ] = False,
    extra_arg: Annotated[
        Optional[list[str]], typer.Option("--extra-arg", help="vllm --launch: extra server argument (repeat).")
    ] = None,
    env: Annotated[
        Optional[list[str]], typer.Option("--env", help="vllm --launch: KEY=VALUE for every server (repeat).")
    ] = None,
    python: Annotated[
        Optional[str], typer.Option("--python", help="vllm --launch: interpreter that has vLLM (default: this one).")
    ] = None,
    start_timeout: Annotated[
        float, typer.Option("--start-timeout", help="vllm --launch: seconds to wait for each /health.")
    ] = 600.0,
    vocab: Annotated[str, typer.Option("--vocab", help="vllm: prompt token ids from LOW:HIGH.")] = "4:1000",
    seed: Annotated[Optional[int], typer.Option("--seed", help="vllm: override the scenario's seed.")] = None,
    speed_ref_ms: Annotated[
        Optional[float],
        typer.Option(
            "--speed-ref-ms",
            help="vllm: the speed canary "
            "(ms/token) of the profile's calibration; the twin's "
            "times are scaled by the canary measured now / this.",
        ),
    ] = None,
) -> None:
    """Validate a batch of plans or specs at once (all their GPUs in parallel) and report across them.
    Exit 1 when any GPU starves, fails to start or misses its scenario's SLO. With --engine vllm: run one
    plan on real vLLM servers (--launch or --endpoints), write the measured results, and print the
    twin-vs-real error table."""
    if engine == "vllm":
        from optplace.vllm.commands import run_validate_vllm

        raise typer.Exit(
            run_validate_vllm(
                files,
                launch=launch,
                endpoints=endpoints,
                router=router,
                window=window,
                out=out,
                force=force,
                json_out=json_out,
                model=model,
                adapters_dir=adapters_dir,
                make_adapters=make_adapters,
                extra_args=extra_arg,
                env=env,
                python=python,
                start_timeout=start_timeout,
                vocab=vocab,
                seed=seed,
                allow_path=allow_path,
                speed_ref_ms=speed_ref_ms,
            )
        )
    if engine != "twin":
        raise _fail_input([f"--engine: unknown engine {engine!r} (valid: twin, vllm)"])
    vllm_only = {
        "--launch": launch,
        "--endpoints": endpoints,
        "--router": router,
        "--window": window,
        "--out": out,
        "--model": model,
        "--adapters-dir": adapters_dir,
        "--make-adapters": make_adapters,
        "--extra-arg": extra_arg,
        "--env": env,
        "--python": python,
        "--seed": seed,
        "--speed-ref-ms": speed_ref_ms,
    }
    given = [k for k, v in vllm_only.items() if v not in (None, False)]
    if given:
        raise _fail_input([f"{', '.join(given)}: only with --engine vllm"])
    from optplace.app.reporting import PlanLoadError, load_plan_or_spec, validate_many

    try:
        items = [load_plan_or_spec(f, allow_path or ()) for f in files]
    except PlanLoadError as e:
        raise _fail_input(e.lines) from None
    n_gpus = sum(len(it.gpus) for it in items)
    with _status(f"validating {count(n_gpus, 'GPU')} of {count(len(items), 'plan')} in the twin") as status:
        results = validate_many(items, workers=workers, progress=status.count)
    if json_out:
        print(
            json.dumps(
                {"results": [{"file": str(f), **r.to_json(reproducible=reproducible)} for f, r in zip(files, results)]},
                indent=2,
            )
        )
    else:
        from optplace.app.render import render_validation_table

        render_validation_table(_console(), [str(f) for f in files], results, wide=wide)
    if not all(r.ok for r in results):
        raise typer.Exit(EXIT_FAIL)


@app.command()
def capacity(
    spec: Annotated[
        Path, typer.Argument(help="Scenario YAML; its adapter groups give the mix (counts read as proportions).")
    ],
    json_out: JsonOpt = False,
    gpu_type: Annotated[Optional[str], typer.Option("--gpu", help="GPU type of the pool.")] = None,
    no_confirm: Annotated[bool, typer.Option("--no-confirm", help="Skip the twin confirmation.")] = False,
    no_breaks: Annotated[
        bool,
        typer.Option(
            "--no-breaks", help="Skip the search for the load at which each SLO bound breaks (a few twin runs)."
        ),
    ] = False,
    allow_path: AllowPath = None,
) -> None:
    """Largest number of adapters of the spec's mix that one GPU serves within the spec's SLO (by the
    study's throughput rule with `slo: none`), with the best max_loras (searched with the capacity
    oracle, judged by the twin), and the extra load at which each SLO bound, the stable queue and the
    throughput rule break."""
    sc = _load_or_exit(spec, allow_path)
    from optplace.pipeline import capacity as find_capacity

    try:
        ans = find_capacity(sc, spec.resolve().parent, gpu_type=gpu_type, confirm=not no_confirm, breaks=not no_breaks)
    except ValueError as e:
        raise _fail_input([f"--gpu: {e}"]) from None
    if json_out:
        print(json.dumps(ans.to_json(), indent=2))
        return
    from optplace.app.render import capacity_breaks, say

    conf = {True: "confirmed by the twin", False: "NOT confirmed by the twin", None: "not checked in the twin"}
    within = "within the SLO" if ans.judged_by == "slo" else "by the throughput rule (slo: none)"
    say(
        _console(),
        f"{sc.name}: one {ans.gpu_type} serves up to {ans.max_adapters} adapters of this mix {within} with "
        f"--max-loras {ans.max_loras} ({ans.offered_tok_s:,.0f} tokens/s offered, "
        f"{ans.throughput_tok_s:,.0f} delivered; {ans.source} oracle, {conf[ans.twin_confirmed]})",
    )
    if ans.breaks:
        say(_console(), capacity_breaks(ans.breaks))


@app.command()
def bench(
    name: Annotated[
        str,
        typer.Argument(
            help="fidelity | twin-speed | surrogate | solver | capacity | limits | busy-slots | latency-rule"
        ),
    ],
    json_out: JsonOpt = False,
    full: Annotated[
        bool,
        typer.Option(
            "--full",
            help="Every configuration (twin-speed: all 294 reference runs; solver: the largest families too; "
            "busy-slots: the wider grid).",
        ),
    ] = False,
    client_cap: Annotated[
        bool,
        typer.Option(
            "--client-cap", help="twin-speed: replay with the reference harness's cap on outstanding requests."
        ),
    ] = False,
    sizes: Annotated[
        Optional[str], typer.Option("--sizes", help="solver: adapter counts, comma-separated (e.g. 100,1000).")
    ] = None,
    strategies: Annotated[
        Optional[str], typer.Option("--strategies", help="solver: strategies, comma-separated.")
    ] = None,
    skews: Annotated[
        Optional[str],
        typer.Option("--skews", help="solver: rate skews, comma-separated (uniform, zipf-0.5, zipf-0.9, zipf-<s>)."),
    ] = None,
    rule: Annotated[
        Optional[str],
        typer.Option(
            "--rule",
            help="solver: twin-checked families solved under the default SLO (slo), the study's throughput rule "
            "(study) or both side by side (default both).",
        ),
    ] = None,
    window: Annotated[
        Optional[float],
        typer.Option(
            "--window",
            help="solver: the twin checks' window [s] (default 3600: the reference runs' hour); shorter is "
            "quicker and noisier.",
        ),
    ] = None,
    markdown: Annotated[
        Optional[Path],
        typer.Option(
            "--markdown",
            help="fidelity: also write the figures as a Markdown page (the repository's is docs/figures/fidelity.md).",
        ),
    ] = None,
    cv: Annotated[
        bool,
        typer.Option(
            "--cv",
            help="fidelity: also score coefficients fitted on the other half of the workload groups (cross-validated).",
        ),
    ] = False,
    per_run: Annotated[bool, typer.Option("--runs", help="fidelity: print the per-run latency table.")] = False,
    gap: Annotated[
        bool,
        typer.Option(
            "--gap",
            help="solver: also plan every family under the default SLO and print how full its GPUs are under "
            "their oracle and how much more load the bound's envelope accepts on them.",
        ),
    ] = False,
    step_form: Annotated[
        Optional[str],
        typer.Option(
            "--step-form",
            help="fidelity: score this step-time form (fitted on all runs, and per fold with --cv) instead of the "
            "bundled profiles'.",
        ),
    ] = None,
) -> None:
    """Run a benchmark and print its figures (docs/json-contracts.md lists what --json holds)."""
    import importlib
    import inspect

    modules = {
        "fidelity": "fidelity",
        "twin-speed": "twin_speed",
        "surrogate": "surrogate",
        "solver": "solver",
        "capacity": "capacity",
        "limits": "limits",
        "busy-slots": "busy_slots",
        "latency-rule": "latency_rule",
    }
    if name not in modules:
        raise _fail_input([f"bench: unknown benchmark {name!r} (valid: {', '.join(modules)})"])
    try:
        mod = importlib.import_module(f"optplace.bench.{modules[name]}")
    except ModuleNotFoundError as e:
        raise _fail_input([f"bench: benchmark {name!r} is not available in this build ({e.name})"]) from None
    params = inspect.signature(mod.run).parameters
    kwargs: dict[str, Any] = {}
    for flag, key, value in (
        ("--full", "full", full),
        ("--client-cap", "client_cap", client_cap),
        ("--sizes", "sizes", sizes),
        ("--strategies", "strategies", strategies),
        ("--skews", "skews", skews),
        ("--rule", "rule", rule),
        ("--window", "validate_window_s", window),
        ("--cv", "cv", cv),
        ("--runs", "per_run", per_run),
        ("--step-form", "step_form", step_form),
        ("--gap", "slo_gap", gap),
    ):
        if value:
            if key not in params:
                raise _fail_input([f"bench {name}: {flag} does not apply to this benchmark"])
            kwargs[key] = value
    if step_form:
        from optplace.calibration.reference_fit import FIT_FORMS

        if step_form not in FIT_FORMS:
            raise _fail_input([f"--step-form: unknown form {step_form!r} (valid: {', '.join(FIT_FORMS)})"])
    if window is not None and not (math.isfinite(window) and window > 0):
        raise _fail_input([f"--window: expected a positive number of seconds, got {window:g}"])
    if sizes:
        try:
            kwargs["sizes"] = tuple(int(x) for x in sizes.split(","))
        except ValueError:
            raise _fail_input([f"--sizes: expected comma-separated adapter counts, got {sizes!r}"]) from None
        if min(kwargs["sizes"]) < 1:
            raise _fail_input([f"--sizes: adapter counts must be ≥ 1, got {sizes!r}"])
    if strategies:
        from optplace.infra.registry import STRATEGIES

        names = tuple(x.strip() for x in strategies.split(","))
        unknown = [x for x in names if x not in STRATEGIES]
        if unknown:
            raise _fail_input([f"--strategies: {STRATEGIES.unknown(x)}" for x in unknown])
        kwargs["strategies"] = names
    if skews:
        kwargs["skews"] = tuple(x.strip() for x in skews.split(","))
        try:
            for x in kwargs["skews"]:
                mod.zipf_exponent(x)
        except ValueError as e:
            raise _fail_input([f"--skews: {e}"]) from None
    if rule and rule not in mod.RULES:
        raise _fail_input([f"--rule: unknown rule {rule!r} (valid: {', '.join(mod.RULES)})"])
    if markdown is not None and not hasattr(mod, "markdown"):
        raise _fail_input([f"bench {name}: --markdown does not apply to this benchmark"])
    result = mod.run(json=json_out, **kwargs)
    if json_out:
        print(json.dumps(result, indent=2))
    if markdown is not None:
        from optplace.infra.outputs import write_text_atomic

        write_text_atomic(markdown, mod.markdown(result))
        _console(stderr=True).print(f"wrote {markdown}", markup=False)


@app.command()
def schema() -> None:
    """Print the JSON schema of scenario files."""
    from optplace.specs import Scenario

    print(json.dumps(Scenario.model_json_schema(by_alias=True), indent=2))


@app.command()
def profiles(
    show: Annotated[
        Optional[str], typer.Option("--show", help="Print the KV-capacity grid of this profile (name or model@gpu).")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List hardware/model profiles (calibrated ones ship with optplace; others are built uncalibrated)."""
    from rich.table import Table

    from optplace.app.render import say
    from optplace.specs import GPUS, MODELS, UnknownProfile, bundled_profiles, resolve_profile

    if show:
        model, _, gpu = show.partition("@")
        try:
            prof = resolve_profile(model, gpu)
        except UnknownProfile as e:
            raise _fail_input([f"--show: {e}"]) from None
        slots = [8, 16, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384]
        grid = {
            r: {L: prof.kv_cache_tokens(L, r) if prof.startup_status(L, r) == "ok" else None for L in slots}
            for r in (8, 16, 32, 64)
        }
        if json_out:
            print(
                json.dumps(
                    {
                        "profile": prof.name,
                        "calibrated": prof.calibrated,
                        "source": prof.source,
                        "kv_cache_tokens": {str(r): {str(L): v for L, v in row.items()} for r, row in grid.items()},
                    },
                    indent=2,
                )
            )
            return
        # One row per slot count, one column per rank: fits 80 columns (14 slot counts across do not).
        t = Table(title=f"{prof.name}: KV-cache tokens (– = fails at start)")
        t.add_column("--max-loras", justify="right")
        for r in grid:
            t.add_column(f"rank {r}", justify="right")
        for L in slots:
            t.add_row(str(L), *[f"{grid[r][L]:,}" if grid[r][L] is not None else "–" for r in grid])
        out = _console()
        out.print(t)
        say(out, f"source: {prof.source}")
        return
    rows: list[dict[str, Any]] = []
    for prof in bundled_profiles().values():
        rows.append(
            {
                "name": prof.name,
                "calibrated": True,
                "source": prof.source,
                "max_slots": {str(r): prof.max_startable_slots(r) for r in (8, 16, 32)},
            }
        )
    if json_out:
        print(json.dumps({"calibrated": rows, "models": sorted(MODELS), "gpus": sorted(GPUS)}, indent=2))
        return
    t = Table(title="Calibrated profiles (model@gpu)")
    for c in ("profile", "startable slots at rank 8/16/32"):
        t.add_column(c)
    for entry in rows:
        t.add_row(entry["name"], "/".join(str(v) for v in entry["max_slots"].values()))
    out = _console()
    out.print(t)
    for entry in rows:
        say(out, f"{entry['name']}: {entry['source']}")
    say(
        out,
        f"Uncalibrated profiles can be built for any of these models: {', '.join(sorted(MODELS))} "
        f"on any of these GPUs: {', '.join(sorted(GPUS))} (or give an architecture/GPU inline in the spec).",
    )


@app.command()
def calibrate(
    reference: Annotated[
        Optional[Path],
        typer.Option(
            "--reference", help="Folder with the reference CSVs (kv_capacity_v1.csv, v1_*.csv, real_runs.csv, …)."
        ),
    ] = None,
    out: Annotated[
        Optional[Path],
        typer.Option(
            "--out", help="--reference: folder for the profile JSON files; --sweep/--runs: the profile JSON file."
        ),
    ] = None,
    bundled: Annotated[bool, typer.Option("--bundled", help="Regenerate the profiles shipped with optplace.")] = False,
    sweep: Annotated[
        bool,
        typer.Option("--sweep", help="Measure a real server (needs --engine vllm, --model-dir) and fit a profile."),
    ] = False,
    engine: Annotated[str, typer.Option("--engine", help="--sweep: the engine to measure (vllm).")] = "vllm",
    runs: Annotated[
        Optional[list[Path]],
        typer.Option(
            "--runs",
            help="Fit from saved runs (run folders written by "
            "validate --engine vllm --out or a sweep, or "
            "folders of them; repeat).",
        ),
    ] = None,
    model_dir: Annotated[
        Optional[Path],
        typer.Option(
            "--model-dir", help="--sweep: the model folder to serve (the tiny Llama is built there if missing)."
        ),
    ] = None,
    runs_out: Annotated[
        Optional[Path],
        typer.Option("--runs-out", help="--sweep: where to keep the measured runs (default: next to --out)."),
    ] = None,
    name: Annotated[str, typer.Option("--name", help="--sweep/--runs: profile name (model@gpu).")] = "tiny-llama@cpu",
    force: Force = False,
) -> None:
    """Fit profiles (memory, step time, adapter load, scheduler overhead) from measurement CSVs, or from
    real vLLM runs (--runs) or a calibration sweep against a real server (--sweep --engine vllm)."""
    if sweep or runs:
        from optplace.vllm.commands import run_calibrate_measured

        if reference is not None or bundled:
            raise _fail_input(["calibrate: --reference/--bundled do not combine with --sweep/--runs"])
        raise typer.Exit(
            run_calibrate_measured(
                sweep=sweep,
                engine=engine,
                runs=runs or [],
                out=out,
                model_dir=model_dir,
                runs_out=runs_out,
                name=name,
                force=force,
            )
        )
    from optplace.calibration.profiles import bundled_profiles_dir, calibrate_reference

    if reference is None:
        raise _fail_input(["calibrate: give --reference DIR, --sweep --engine vllm, or --runs DIR"])
    if not (reference / "kv_capacity_v1.csv").is_file():
        raise _fail_input([f"--reference: {reference}/kv_capacity_v1.csv not found"])
    if (out is None) == (not bundled):
        raise _fail_input(["calibrate: give exactly one of --out DIR or --bundled"])
    target = bundled_profiles_dir() if bundled else out
    assert target is not None
    if not bundled:
        from optplace.infra.outputs import OutputExists, check_target

        try:
            check_target(target, force)
        except OutputExists as e:
            raise _fail_input([str(e)]) from None
    for path in calibrate_reference(reference, target):
        _console().print(f"wrote {path}", markup=False)


def _mount_subapps() -> None:
    from optplace.vllm.commands import deploy as _deploy
    from optplace.app.surrogate_commands import app as surrogate_app
    from optplace.vllm.commands import vllm_app

    app.add_typer(vllm_app, name="vllm")
    app.add_typer(surrogate_app, name="surrogate")
    app.command("deploy", help="Write per-GPU `vllm serve` commands, routes, router config and a launcher for a plan.")(
        _deploy
    )


_mount_subapps()


def _stopped(kind: str) -> str:
    """The one line for an interrupted run: which outputs had been renamed into place, complete, before
    the signal (one held during a final rename is delivered just after it; a sweep has written its
    provenance long before), or that none was written."""
    from optplace.infra.outputs import committed_outputs

    done = committed_outputs()
    if not done:
        return f"{kind}: no output was written"
    return f"{kind}; written completely before the signal: {', '.join(str(p) for p in done)}"


def _exit_after_signal(code: int) -> None:
    """Leave at once after a SIGTERM/SIGINT stop, without the interpreter's shutdown hooks.

    Every output has been rolled back (or completed) by its context manager before this point, and the
    twin's worker processes were killed (``executors.iter_done``). What is left for shutdown is the
    process pool's own exit hook, which joins its manager thread: with workers killed mid-task it could
    wait forever (1 run in 6 of ``test_sigterm_during_slow_validation`` on a loaded machine) or print
    "Exception ignored … Bad file descriptor" under the one line. A local Ray instance is stopped first.
    """
    import os

    if "ray" in sys.modules:
        try:
            import ray

            if ray.is_initialized():
                ray.shutdown()
        except Exception:  # noqa: BLE001 - best effort on the way out
            pass
    _kill_children()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _kill_children() -> None:
    """SIGKILL every process this one forked that is still alive.

    The executor kills the pool's workers when the signal unwinds it, but the pool's manager thread
    can start a replacement worker after that; such a worker holds SIGTERM blocked (inherited) and the
    parent's stderr open, so whoever waits for that pipe to close waits forever (CI: "terminated" was
    printed, then the caller timed out). Children are found by parent pid in /proc (Linux) and through
    multiprocessing's own list; two sweeps catch one started during the first."""
    import os
    import signal
    import time
    from pathlib import Path

    me = os.getpid()
    for sweep in range(2):
        if "multiprocessing" in sys.modules:
            import multiprocessing

            for proc in multiprocessing.active_children():
                proc.kill()
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == me:
                    os.kill(int(stat.parent.name), signal.SIGKILL)
            except (OSError, IndexError, ValueError):
                continue  # ended while being read, or not ours to kill
        if sweep == 0:
            time.sleep(0.05)


def main() -> None:
    """Console-script entry point: run the app; unexpected exceptions become exit code 3, one line."""
    from optplace.infra.outputs import Terminated, install_sigterm_handler, sigterm_seen

    install_sigterm_handler()
    try:
        rc = app(standalone_mode=False)
        if rc == 130:  # typer itself turns KeyboardInterrupt into Exit(130), silently
            print(_stopped("interrupted"), file=sys.stderr)
            _exit_after_signal(130)
        sys.exit(rc if isinstance(rc, int) else EXIT_OK)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print(_stopped("interrupted"), file=sys.stderr)
        _exit_after_signal(130)
    except Terminated:
        print(_stopped("terminated"), file=sys.stderr)
        _exit_after_signal(143)
    except SystemExit:
        raise
    except Exception as e:  # noqa: BLE001 - the one place that turns crashes into exit code 3
        if sigterm_seen():  # the signal was swallowed inside a library and resurfaced as another error
            print(_stopped("terminated"), file=sys.stderr)
            _exit_after_signal(143)
        # typer vendors its own click: recognise its usage errors and aborts by shape, not by class.
        if type(e).__name__ == "Abort":
            print("aborted", file=sys.stderr)
            sys.exit(130)
        if hasattr(e, "show") and hasattr(e, "exit_code"):
            e.show()
            sys.exit(EXIT_INPUT)
        print(
            f"internal error: {type(e).__name__}: {' '.join(str(e).split())[:500]} "
            "(please report it with the spec that caused it)",
            file=sys.stderr,
        )
        sys.exit(EXIT_INTERNAL)


if __name__ == "__main__":
    main()
