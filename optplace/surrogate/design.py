"""Sweep design: which GPU configurations a twin sweep evaluates, and which rows a replicate re-runs.

* **Pass 1** — a scrambled Sobol sequence over the feasible region: adapters log-uniform in
  1..``max_adapters``; a rank subset of the profile's ranks (round-robin as in the study, or a
  random mix); ``max_loras`` log-uniform in 1..min(adapters, memory cap of the largest rank),
  with extra mass on "one slot per adapter"; an offered load log-uniform relative to a reference
  capacity; rate shapes (equal, the study's halving triples, Zipf); ShareGPT or log-normal lengths;
  Poisson, Gamma or MMPP arrivals.
* **Pass 2** — boundary chains: for further Sobol points, bisect the offered load (in log space)
  between the ends of the load range on the evaluator's starvation verdict, so rows concentrate
  near the starvation boundary where the classifier must be sharp.

Every row's configuration and twin seed are a pure function of (sweep seed, row index) — never of the
worker — so any executor gives identical rows and an interrupted sweep resumes by skipping the
indices it has (:mod:`optplace.surrogate.execution`).  A replicate re-runs rows of a finished sweep
under other twin seeds (:func:`replicate_seed`), all of them or the subsets :func:`noisy_row` and
:func:`boundary_row` pick (docs/surrogate-training.md explains the rules).
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from optplace.surrogate.config import ArrivalParams, GpuCase, GpuMetrics, LengthParams

_SOBOL_DIMS = 12


class SweepEvaluator(Protocol):
    """An evaluator usable in a sweep: callable, self-describing, and aware of the memory cap."""

    def __call__(self, config: GpuCase) -> GpuMetrics: ...

    def describe(self) -> dict[str, str]: ...

    def slot_cap(self, max_lora_rank: int) -> int: ...


@dataclass(frozen=True, slots=True)
class SweepDesign:
    """What to sample. ``load`` is offered tokens/s ÷ ``ref_capacity_tok_s``."""

    n_points: int = 1500
    n_chains: int = 100
    chain_steps: int = 5
    max_adapters: int = 576
    ranks: tuple[int, ...] = (8, 16, 32)
    duration_s: float = 3600.0
    ref_capacity_tok_s: float = 10000.0
    load_range: tuple[float, float] = (0.03, 2.0)
    full_slots_share: float = 0.25
    sharegpt_share: float = 0.6
    poisson_share: float = 0.5
    gamma_share: float = 0.3

    @property
    def n_rows(self) -> int:
        """Total rows of the sweep (pass 1 + pass 2)."""
        return self.n_points + self.n_chains * self.chain_steps


@dataclass(frozen=True, slots=True)
class RowTask:
    """One evaluation: row index, its group (chain), pass number, load and configuration."""

    index: int
    group: int
    pass_no: int
    load: float
    rate_kind: str
    config: GpuCase


def row_seed(seed: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def sobol_unit(seed: int, n: int) -> np.ndarray:
    from scipy.stats import (
        qmc,  # scipy ships with scikit-learn; imported lazily (slow import)
    )

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # balance warning for non-power-of-2 n: harmless here
        return qmc.Sobol(_SOBOL_DIMS, scramble=True, seed=np.random.default_rng([seed, 0x50B0])).random(n)


def _rank_subsets(ranks: Sequence[int]) -> list[tuple[int, ...]]:
    rs = sorted(ranks)
    return [c for k in range(1, len(rs) + 1) for c in itertools.combinations(rs, k)]


def design_config(
    u: np.ndarray,
    design: SweepDesign,
    slot_cap: Callable[[int], int],
    seed: int,
    group: int,
    index: int,
) -> tuple[GpuCase, float, str] | None:
    """Map a unit-cube point to a configuration (None when no slot count can start).

    ``u[4]`` is the load coordinate (bisected by the boundary chains).  Random choices that shape
    the adapter mix use a generator seeded by (seed, group) so all steps of a chain share the mix;
    the twin's seed comes from (seed, index).
    """
    rng = np.random.default_rng([seed, group, 0xAD])
    n = int(min(design.max_adapters, max(1, math.floor(math.exp(u[0] * math.log(design.max_adapters + 1))))))
    subsets = _rank_subsets(design.ranks)
    subset = subsets[min(int(u[1] * len(subsets)), len(subsets) - 1)]
    if u[2] < 0.5 or len(subset) == 1:
        ranks = [subset[i % len(subset)] for i in range(n)]  # the study's round-robin split
    else:
        p = rng.dirichlet(np.ones(len(subset)))
        ranks = [int(x) for x in rng.choice(subset, size=n, p=p)]
    rank_max = max(ranks)
    cap = min(n, slot_cap(rank_max))
    if cap < 1:
        return None
    if u[3] >= 1.0 - design.full_slots_share:
        slots = cap
    else:
        v = u[3] / (1.0 - design.full_slots_share)
        slots = int(min(cap, max(1, math.floor(math.exp(v * math.log(cap + 1))))))
    lo, hi = design.load_range
    load = math.exp(math.log(lo) + u[4] * (math.log(hi) - math.log(lo)))

    if u[5] < 0.2:
        rate_kind, weights = "equal", np.ones(n)
    elif u[5] < 0.5:
        rate_kind = "halving"  # the study's rate triples a, a/2, a/4, round-robin then shuffled
        weights = np.array([2.0 ** -(i % 3) for i in range(n)])
    else:
        rate_kind = "zipf"
        s = 1.5 * u[6]
        weights = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** s
    weights = rng.permutation(weights)

    if u[7] < design.sharegpt_share:
        lengths = LengthParams()
    else:
        mean_in = math.exp(math.log(32) + u[8] * (math.log(600) - math.log(32)))
        mean_out = math.exp(math.log(16) + u[9] * (math.log(500) - math.log(16)))
        lengths = LengthParams(
            kind="lognormal", mean_input_tokens=round(mean_in, 1), mean_output_tokens=round(mean_out, 1)
        )
    mi, mo = lengths.means()

    if u[10] < design.poisson_share:
        arrivals = ArrivalParams()
    elif u[10] < design.poisson_share + design.gamma_share:
        arrivals = ArrivalParams(kind="gamma", cv=round(0.5 + 2.5 * u[11], 3))
    else:
        arrivals = ArrivalParams(
            kind="mmpp", burst_factor=round(2.0 + 8.0 * u[11], 3), burst_fraction=0.1, mean_burst_s=30.0
        )

    rate_sum = load * design.ref_capacity_tok_s / (mi + mo)
    rates = tuple(float(x) for x in rate_sum * weights / weights.sum())
    cfg = GpuCase(
        ranks=tuple(ranks),
        rates_rps=rates,
        max_loras=slots,
        arrivals=arrivals,
        lengths=lengths,
        max_cpu_loras=None,
        duration_s=design.duration_s,
        seed=row_seed(seed, index),
    )
    return cfg, load, rate_kind


def design_from_dict(d: dict[str, Any]) -> SweepDesign:
    """A :class:`SweepDesign` from its JSON/YAML form (lists become tuples; missing fields take defaults)."""
    fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
    return SweepDesign(**fields)


def design_from_provenance(prov: dict[str, Any]) -> SweepDesign:
    """The design a sweep's provenance records."""
    return design_from_dict(prov["design"])


def replay_units(rows: dict[int, dict[str, str]], design: SweepDesign, seed: int) -> dict[int, tuple[int, np.ndarray]]:
    """``index → (group, unit-cube point)`` of every row of a sweep, pass-2 loads replayed exactly.

    A boundary chain's k-th load is the bisection midpoint after its first k verdicts, so it is
    recomputed from the verdicts stored in ``rows`` (the same arithmetic as :func:`run_sweep`).
    """
    u_all = sobol_unit(seed, design.n_points + design.n_chains)
    out: dict[int, tuple[int, np.ndarray]] = {i: (i, u_all[i]) for i in range(design.n_points) if i in rows}
    for c in range(design.n_chains):
        group = design.n_points + c
        lo, hi = 0.0, 1.0
        for step in range(design.chain_steps):
            index = design.n_points + c * design.chain_steps + step
            if index not in rows:
                break
            mid = 0.5 * (lo + hi)
            u = u_all[group].copy()
            u[4] = mid
            out[index] = (group, u)
            if int(rows[index]["starved"]):
                hi = mid
            else:
                lo = mid
    return out


def replicate_seed(seed: int, index: int, salt: int) -> int:
    """Twin seed of row ``index`` in replicate ``salt`` (≥ 1) of sweep ``seed``."""
    return int(np.random.SeedSequence([seed, index, 0x5EED, salt]).generate_state(1)[0])


REPLICATE_SUBSETS = ("all", "noisy", "boundary")

#: Half-width (loss points) of the band around the starvation rule whose single-seed verdicts flip
#: between twin seeds; the band part of :func:`noisy_row` and the whole of :func:`boundary_row`.
BOUNDARY_BAND = 0.06
#: Loss from which a GPU with fewer slots than adapters counts as saturated in :func:`noisy_row`.
NOISY_SATURATED_LOSS = 0.05

SUBSET_RULES = {
    "noisy": f"source loss >= {NOISY_SATURATED_LOSS} with max_loras < n_adapters, or |loss - 0.10| <= {BOUNDARY_BAND}",
    "boundary": f"|source loss - 0.10| <= {BOUNDARY_BAND}",
}


def noisy_row(loss: float, n_adapters: float, max_loras: float, max_loss: float = 0.10) -> bool:
    """Rows whose twin label varies most from seed to seed, where seed-averaged labels pay off:
    saturated GPUs (loss ≥ 5 %) with fewer slots than adapters (which adapters win the sticky slots
    is random) and rows within 6 points of the starvation rule (the verdict flips between seeds)."""
    return (loss >= NOISY_SATURATED_LOSS and max_loras < n_adapters) or boundary_row(loss, max_loss)


def boundary_row(loss: float, max_loss: float = 0.10) -> bool:
    """Rows within :data:`BOUNDARY_BAND` of the starvation rule: the ones whose verdict a single twin
    seed gets wrong most often, so extra seeds there buy the most label accuracy per twin run."""
    return abs(loss - max_loss) <= BOUNDARY_BAND


def memoize(fn: Callable[[int], int]) -> Callable[[int], int]:
    cache: dict[int, int] = {}

    def f(r: int) -> int:
        if r not in cache:
            cache[r] = fn(r)
        return cache[r]

    return f


def iter_tasks(design: SweepDesign, evaluator: SweepEvaluator, seed: int) -> Iterable[RowTask]:
    """Pass-1 tasks of a design (for inspection and benchmarks)."""
    slot_cap = memoize(evaluator.slot_cap)
    for i, u in enumerate(sobol_unit(seed, design.n_points)):
        made = design_config(u, design, slot_cap, seed, group=i, index=i)
        if made is not None:
            cfg, load, kind = made
            yield RowTask(i, i, 1, load, kind, cfg)
