"""Where parallel work runs: a local process pool (default) or a Ray cluster (optional extra).

One generic ``map_ordered(fn, items)`` so every fan-out (twin validation of a plan's GPUs, surrogate
sweeps) runs the same way. Executors are registered by name in
:data:`optplace.infra.registry.EXECUTORS` (``solver.executor`` and ``ExecutorSpec.kind`` are checked
against it): an executor is a function ``(fn, items, order, spec)`` yielding ``(index, result)``
pairs. ``fn`` must be a picklable top-level function; results come back in input order
whatever order the workers finish in, so runs are deterministic.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from optplace.infra.registry import EXECUTORS

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class ExecutorSpec:
    """``local`` (process pool of ``workers``; 1 = in-process) or ``ray`` (``address`` or a local instance)."""

    kind: str = "local"
    workers: int | None = None
    address: str | None = None

    @property
    def n_workers(self) -> int:
        return max(1, self.workers or os.cpu_count() or 1)


def map_ordered(
    fn: Callable[[T], R],
    items: Sequence[T],
    spec: ExecutorSpec = ExecutorSpec(),
    cost: Callable[[T], float] | None = None,
    on_done: Callable[[int, R], None] | None = None,
) -> list[R]:
    """``[fn(x) for x in items]`` in parallel. ``cost`` orders submission (largest first, so the
    slowest item does not start last); ``on_done(i, result)`` is called as each finishes."""
    order = sorted(range(len(items)), key=lambda i: -cost(items[i])) if cost else list(range(len(items)))
    out: dict[int, R] = {}
    for i, r in iter_done(fn, items, spec, order):
        out[i] = r
        if on_done is not None:
            on_done(i, r)
    return [out[i] for i in range(len(items))]


def iter_done(
    fn: Callable[[T], R], items: Sequence[T], spec: ExecutorSpec = ExecutorSpec(), order: Sequence[int] | None = None
) -> Iterator[tuple[int, R]]:
    """Yield ``(index, fn(items[index]))`` as each finishes (any order); ``order`` is the submission order."""
    order = list(range(len(items))) if order is None else list(order)
    yield from EXECUTORS.get(spec.kind)(fn, items, order, spec)


@EXECUTORS.register("local")
def _run_local(
    fn: Callable[[T], R], items: Sequence[T], order: list[int], spec: ExecutorSpec
) -> Iterator[tuple[int, R]]:
    """A process pool of ``spec.workers`` (default: the cores); one worker runs in-process."""
    n = min(spec.n_workers, len(items))
    if n <= 1:
        for i in order:
            yield i, fn(items[i])
        return
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    from optplace.infra.outputs import signals_held

    before = set(multiprocessing.active_children())
    pool = None
    try:
        # Workers are started with SIGTERM/SIGINT held (delivered once all are up and every job is
        # queued): a signal landing while the pool forks a worker can leave a worker that waits on the
        # task queue forever and blocks interpreter exit (CI: SIGTERM as the validation's first worker
        # appeared; the one line was printed, then the process hung).
        with signals_held():
            pool = ProcessPoolExecutor(max_workers=n)
            futures = {pool.submit(fn, items[i]): i for i in order}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for f in done:
                yield futures[f], f.result()
    except BaseException:
        # Interrupted (a signal, or the consumer stopped early): kill the workers instead of waiting
        # for their jobs (SIGKILL: they inherited the held signals).
        for proc in multiprocessing.active_children():
            if proc not in before:
                proc.kill()
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def _call(fn: Callable[[T], R], item: T) -> R:
    return fn(item)


@EXECUTORS.register("ray")
def _run_ray(fn: Callable[[T], R], items: Sequence[T], order: list[int], spec: ExecutorSpec) -> Iterator[tuple[int, R]]:
    """A Ray cluster (``spec.address``) or a local Ray instance (optional extra)."""
    try:
        import ray
    except ImportError as e:
        raise RuntimeError("the Ray executor needs the optional extra: pip install 'optplace[ray]'") from e
    if not ray.is_initialized():
        kw: dict[str, Any] = {"ignore_reinit_error": True, "log_to_driver": False}
        if spec.address:
            kw["address"] = spec.address
        elif spec.workers:
            kw["num_cpus"] = spec.workers
        ray.init(**kw)
    # Ray only decorates plain functions (not partials); ship ``fn`` once and call it remotely.
    remote: Any = ray.remote(_call)
    fn_ref = ray.put(fn)
    refs = {remote.remote(fn_ref, items[i]): i for i in order}
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        for ref in done:
            yield refs[ref], ray.get(ref)


class Ahead:
    """Work started ahead in a forked child process, whose messages the parent reads in order.

    ``Ahead(work)`` forks; the child calls ``work(send)``, where ``send(message)`` passes one picklable
    message to the parent, and exits. :meth:`receive` returns the next message, re-raising an exception
    ``work`` raised (the one that ended it); :meth:`stop` kills the child when its remaining work is not
    wanted (also on any exit of a ``with`` block). Forking (not spawning) hands the child the parent's
    state as it is, unpickled, so only the messages cross; the child runs with SIGTERM/SIGINT held (it
    must never run the parent's handlers, e.g. the one that removes a half-written output) and is
    stopped with SIGKILL.

    Used to run a solve's independent second path on the other core while the parent solves the first
    (:func:`optplace.solver.strategies.solve_split`)."""

    def __init__(self, work: Callable[[Callable[[Any], None]], None]) -> None:
        import multiprocessing

        from optplace.infra.outputs import signals_held

        ctx = multiprocessing.get_context("fork")
        self._recv, send = ctx.Pipe(duplex=False)
        with signals_held():
            self._proc = ctx.Process(target=_ahead_child, args=(work, send), daemon=False)
            self._proc.start()
        send.close()  # the parent's copy: the pipe ends (EOFError) when the child's closes

    def receive(self) -> Any:
        """The child's next message; its exception re-raised; RuntimeError if it died without one."""
        try:
            kind, payload = self._recv.recv()
        except EOFError:
            self.stop()
            raise RuntimeError(
                f"the forked solver process ended without its result (exit {self._proc.exitcode})"
            ) from None
        if kind == "raised":
            self.stop()
            raise payload
        return payload

    def stop(self) -> None:
        """Kill the child (if still running) and release it."""
        if self._proc.is_alive():
            self._proc.kill()
        self._proc.join()
        self._recv.close()

    def __enter__(self) -> "Ahead":
        return self

    def __exit__(self, *exc: Any) -> None:
        if not self._recv.closed:
            self.stop()


def _ahead_child(work: Callable[[Callable[[Any], None]], None], send: Any) -> None:
    try:
        work(lambda message: send.send(("message", message)))
    except BaseException as e:  # noqa: BLE001 - every way the work ends is reported to the parent
        send.send(("raised", e))
    finally:
        send.close()
