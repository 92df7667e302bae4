"""The ``milp`` strategy: a pattern (cutting-stock) master solved by column generation, then an
integer master in Pyomo + HiGHS (``appsi_highs``) or PuLP + CBC (``solver.backend: pulp``).

Columns are per-GPU *patterns*: a GPU type, a ``max_lora_rank``, a slot count and a class-count
vector, feasible for the capacity oracle with every adapter at its class's representative (largest)
rate. The master chooses how many GPUs run each pattern so every class is covered:

    min Σ_p w_p x_p   s.t.  Σ_p a_pc x_p ≥ n_c  (every class c),   Σ_{p of type t} x_p ≤ K_t,   x ∈ ℤ₊

Pricing uses the analytic model's linear form: for fixed (type, max rank, slots L) a pattern is
feasible when either Σ a_c ≤ L (every adapter has a slot) and its load Σ a_c λ_c ≤ ρ·λ*(L), or its
active adapters A = Σ a_c (1 − e^{−λ_c T}) ≤ κ·L and load + s·A ≤ b for a tangent (s, b) of the convex
rotation-loss curve ρ·λ*/(1 + ROTATION·A/L) (conservative, so columns stay feasible) — a 2-constraint
bounded knapsack per family, solved by a normalised-density greedy. The LP master is solved by highspy
directly (columns added incrementally) with Wentges dual smoothing, since the LP is very degenerate
at an integral warm start. The warm start is the improved greedy on representative rates (its GPUs
are valid columns). With a surrogate oracle (:func:`learned_model`) the learned models are asked
too: a priced column joins the master only when they accept it at its representative rates, and the
warm start is built on them, so the master chooses among configurations they accept and its mapped
GPUs are not rejected afterwards. After column generation, a Farley-value dual ascent supplies duals for the
lower bound (``bound.py``), and the patterns priced at the stabilised and ascended duals join the
integer master. Classes are mapped back to named adapters hottest-first, every GPU re-gets its best
slot count for its real adapters, and a consolidation pass tries to empty GPUs. The best greedy plan
on the real rates is kept if it is better, so ``milp`` never returns more GPUs than its warm start
or the published greedy.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from optplace.solver.capacity import ROTATION, SLOT_GRID, AnalyticCapacity, CapacityOracle, Mix
from optplace.solver.greedy import consolidate, greedy_fast, greedy_improved
from optplace.solver.learned_pricing import LearnedPattern, LearnedPricer
from optplace.solver.plan import GpuAssignment, assign_gpu
from optplace.solver.problem import Deadline, Problem, TimeLimitReached, classify


#: Learned-model pricing solves (optplace.solver.learned_pricing) per solve, and the most time one may
#: take: each costs ~1-6 s at 1,000 to 10,000 adapters (up to 4 MILPs to its fixed point), so they are
#: counted work (the same solve makes the same calls on any machine the clock does not stop; the cap is
#: a safety net, as a 5 s cap cut a fixed point in two on this machine), and few: on the bench families
#: their columns left every plan as it was (docs/architecture.md, "Learned pricing").
LEARNED_CALLS = 2
LEARNED_CALL_S = 15.0
#: Least time left for a learned pricing solve to be started: building its model alone takes ~0.8 s.
LEARNED_MIN_S = 3.0
#: Under the busy-slot rule (:data:`optplace.solver.envelope.BUSY_PER_SLOT`), the shares of a slot
#: count's load limit that extra fewer-slots-than-adapters families are capped at: many light adapters
#: fit the slots only at a lighter load.
ROTATION_LOAD_SHARES = (0.5, 0.7, 0.85)


@dataclass(frozen=True, slots=True)
class Column:
    """One pattern: type, max rank, slots and the class-count vector."""

    gtype: int
    rank_max: int
    slots: int
    counts: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class MasterResult:
    """Integer master outcome."""

    x: dict[int, int]
    status: str
    objective: float


# ---------------------------------------------------------------------------------------------
# Pyomo master: variables, expressions, constraints, objective (in that order, one function each)


def _variables(m: Any, pyo: Any, columns: Sequence[Column], relax: bool) -> None:
    m.P = pyo.RangeSet(0, len(columns) - 1)
    m.x = pyo.Var(m.P, domain=pyo.NonNegativeReals if relax else pyo.NonNegativeIntegers)


def _expressions(m: Any, pyo: Any, columns: Sequence[Column], n_classes: int) -> None:
    m.C = pyo.RangeSet(0, n_classes - 1)
    m.covered = pyo.Expression(
        m.C, rule=lambda m, c: sum(columns[p].counts[c] * m.x[p] for p in m.P if columns[p].counts[c])
    )


def _cover_constraints(m: Any, pyo: Any, need: Sequence[int]) -> None:
    m.cover = pyo.Constraint(m.C, rule=lambda m, c: m.covered[c] >= need[c])


def _pool_constraints(m: Any, pyo: Any, columns: Sequence[Column], avail: Sequence[int]) -> None:
    m.T = pyo.RangeSet(0, len(avail) - 1)

    def rule(m: Any, t: int) -> Any:
        terms = [m.x[p] for p in m.P if columns[p].gtype == t]
        return sum(terms) <= avail[t] if terms else pyo.Constraint.Skip

    m.pool = pyo.Constraint(m.T, rule=rule)


def _objective(m: Any, pyo: Any, columns: Sequence[Column], weights: Sequence[float]) -> None:
    m.obj = pyo.Objective(expr=sum(weights[columns[p].gtype] * m.x[p] for p in m.P), sense=pyo.minimize)


def build_master(
    columns: Sequence[Column], need: Sequence[int], avail: Sequence[int], weights: Sequence[float], relax: bool = False
) -> Any:
    """The pattern master as a Pyomo model (the one place it is built)."""
    import pyomo.environ as pyo

    m = pyo.ConcreteModel("optplace_master")
    _variables(m, pyo, columns, relax)
    _expressions(m, pyo, columns, len(need))
    _cover_constraints(m, pyo, need)
    _pool_constraints(m, pyo, columns, avail)
    _objective(m, pyo, columns, weights)
    return m


def solve_master_pyomo(
    columns: Sequence[Column],
    need: Sequence[int],
    avail: Sequence[int],
    weights: Sequence[float],
    warm: dict[int, int],
    time_limit_s: float,
    mip_gap: float,
) -> MasterResult:
    """Integer master with HiGHS through Pyomo's ``appsi_highs`` (warm start from ``warm``)."""
    import pyomo.environ as pyo
    from pyomo.contrib.appsi.base import TerminationCondition as TC
    from pyomo.contrib.appsi.solvers import Highs  # the solver behind SolverFactory("appsi_highs")

    m = build_master(columns, need, avail, weights)
    for p in m.P:
        m.x[p].set_value(warm.get(p, 0))
    opt = Highs()
    opt.config.time_limit = max(0.2, time_limit_s)
    opt.config.mip_gap = mip_gap
    # Pyomo 6.10.1's appsi HiGHS warm start returned the warm start itself as "optimal" with a wrong
    # objective (1.0 for a 4-GPU start on the golden test), so the warm start is not passed to HiGHS;
    # it stays the incumbent: solve_milp keeps it unless the master's solution is at least as good.
    opt.config.warmstart = False
    opt.config.load_solution = False
    opt.config.stream_solver = False
    res = opt.solve(m)
    tc = res.termination_condition
    if res.best_feasible_objective is None:
        return MasterResult({}, str(tc), math.inf)
    for var, val in res.solution_loader.get_primals().items():
        var.set_value(val, skip_validation=True)
    x = {p: int(round(pyo.value(m.x[p]))) for p in m.P if pyo.value(m.x[p]) > 0.5}
    status = "optimal" if tc == TC.optimal else ("time_limit" if tc == TC.maxTimeLimit else str(tc))
    return MasterResult(x, status, math.fsum(weights[columns[p].gtype] * k for p, k in x.items()))


def solve_master_pulp(
    columns: Sequence[Column],
    need: Sequence[int],
    avail: Sequence[int],
    weights: Sequence[float],
    warm: dict[int, int],
    time_limit_s: float,
    mip_gap: float,
) -> MasterResult:
    """The same master in PuLP + CBC. PuLP's ``status`` says "Optimal" on a time-out, so the
    outcome is read from ``sol_status`` (1 optimal, 2 feasible without proof)."""
    import pulp

    prob = pulp.LpProblem("optplace_master", pulp.LpMinimize)
    x = [pulp.LpVariable(f"x{p}", lowBound=0, cat="Integer") for p in range(len(columns))]
    prob += pulp.lpSum(weights[col.gtype] * x[p] for p, col in enumerate(columns))
    for c in range(len(need)):
        terms = [columns[p].counts[c] * x[p] for p in range(len(columns)) if columns[p].counts[c]]
        prob += pulp.lpSum(terms) >= need[c], f"cover_{c}"
    for t in range(len(avail)):
        terms = [x[p] for p in range(len(columns)) if columns[p].gtype == t]
        if terms:
            prob += pulp.lpSum(terms) <= avail[t], f"pool_{t}"
    for p, v in enumerate(x):
        v.setInitialValue(warm.get(p, 0))
    solver = pulp.PULP_CBC_CMD(
        msg=False, timeLimit=max(1, int(math.ceil(time_limit_s))), gapRel=mip_gap, warmStart=True
    )
    prob.solve(solver)
    if prob.sol_status not in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible):
        return MasterResult({}, pulp.LpSolution[prob.sol_status], math.inf)
    xs = {p: int(round(v.value() or 0)) for p, v in enumerate(x) if (v.value() or 0) > 0.5}
    status = "optimal" if prob.sol_status == pulp.LpSolutionOptimal else "time_limit"
    return MasterResult(xs, status, float(pulp.value(prob.objective)))


# ---------------------------------------------------------------------------------------------
# column generation on the LP relaxation (HiGHS directly)


class _PricingFamily:
    __slots__ = ("gtype", "rank_max", "slots", "kind", "c1", "c2", "w1", "w2", "allowed")

    def __init__(
        self,
        gtype: int,
        rank_max: int,
        slots: int,
        kind: str,
        c1: float,
        c2: float,
        w1: np.ndarray,
        w2: np.ndarray,
        allowed: np.ndarray,
    ) -> None:
        self.gtype, self.rank_max, self.slots, self.kind = gtype, rank_max, slots, kind
        self.c1, self.c2, self.w1, self.w2, self.allowed = c1, c2, w1, w2, allowed


def pricing_families(problem: Problem, an: AnalyticCapacity) -> list[_PricingFamily]:
    """The column families of the analytic model's linear form (conservative: d = slots)."""
    lam_c = np.array([c.rate_rps for c in problem.classes])
    rank_c = np.array([c.rank for c in problem.classes])
    # the busy-slot rule (an SLO oracle's envelope) and the load scale it counts activity at
    busy = an.envelope is not None and an.envelope.busy_per_slot is not None
    k = an.envelope.busy_load_scale if an.envelope is not None else 1.0
    out = []
    for t in problem.gpu_types:
        for rmax in problem.ranks:
            allowed = rank_c <= rmax
            cap = an.slot_cap(t.index, rmax)
            n_avail = int(sum(c.count for c in problem.classes if c.rank <= rmax))
            for L in [L for L in SLOT_GRID if L <= min(cap, n_avail)]:
                lam, svc = an.linear_limits(t.index, rmax, L)
                out.append(_PricingFamily(t.index, rmax, L, "all", lam, float(L), lam_c, np.ones_like(lam_c), allowed))
                p = -np.expm1(-lam_c * svc)
                # Rotation loss load ≤ λ*/(1 + ROTATION·A/L) is convex in A: its tangents at A0 are
                # conservative linear cuts load + s·A ≤ b (columns stay feasible).
                kl = an.active_cap(t.index, rmax, L)  # κ·L, or an envelope's measured cap
                pt = an.point(t.index, rmax, L, L)
                for a0 in (0.25 * kl, 0.5 * kl, 0.8 * kl):
                    q = 1.0 + ROTATION * a0 / L
                    s_ = lam * ROTATION / L / (q * q)
                    b = lam / q + s_ * a0
                    # under the busy-slot rule activity counts at the load: the family's largest
                    pb = _activity(lam_c * k, pt, b * k) if busy else p
                    out.append(_PricingFamily(t.index, rmax, L, "rot", b, kl, lam_c + s_ * pb, pb, allowed))
                if busy:
                    # Lighter loads keep activity lower, so more adapters share the slots: families capped
                    # at a share of the load, where the rotation loss cannot bind (activity ≤ busy·L keeps
                    # it above 1/(1 + ROTATION) ≈ 0.94 of the load limit).
                    for share in ROTATION_LOAD_SHARES:
                        b = share * lam
                        pb = _activity(lam_c * k, pt, b * k)
                        out.append(_PricingFamily(t.index, rmax, L, "rot", b, kl, lam_c, pb, allowed))
    return out


def _activity(lam_c: np.ndarray, pt: Any, load_rps: float) -> np.ndarray:
    """Each class's chance of having a request in the engine, with one request's service time at the
    fluid point ``pt`` loaded with ``load_rps`` (just below its capacity when beyond it): the weight of
    the busy-slot rule (:func:`optplace.solver.envelope.busy_slots`) at a family's largest load."""
    return -np.expm1(-lam_c * pt.service_at(min(load_rps, 0.999e3 / pt.slope_ms)))


def _fill(
    order: np.ndarray,
    val: np.ndarray,
    w1: np.ndarray,
    w2: np.ndarray,
    r1: float,
    r2: float,
    need: np.ndarray,
    a: np.ndarray,
) -> tuple[float, float]:
    """Fill the column in ``order`` (distinct classes): each class as many as it still needs and both
    remaining capacities ``r1``, ``r2`` admit; adds to ``a``, returns what capacity is left.

    The loop runs on Python floats gathered once: indexing NumPy arrays element by element was ~3x
    slower, and this loop is the dual ascent's inner one (millions of steps on a 400-adapter fleet).
    The arithmetic is the same IEEE double arithmetic, so the columns are bit for bit the same."""
    left = (need[order].astype(np.int64) - a[order]).tolist()
    w1o, w2o = w1[order].tolist(), w2[order].tolist()
    took = [0] * len(left)
    for i, k in enumerate(left):
        x1, x2 = w1o[i], w2o[i]
        if x1 > 0:
            k = min(k, math.floor(r1 / x1 + 1e-9))
        if x2 > 0:
            k = min(k, math.floor(r2 / x2 + 1e-9))
        if k <= 0:
            continue
        took[i] = k
        r1 -= k * x1
        r2 -= k * x2
    a[order] += np.asarray(took, dtype=a.dtype)
    return r1, r2


def _price_fast(fam: _PricingFamily, pi: np.ndarray, lam_c: np.ndarray, need: np.ndarray) -> tuple[float, np.ndarray]:
    """Normalised-density greedy only (for the dual ascent, where speed matters more)."""
    val = np.where(fam.allowed, pi, 0.0)
    cand = np.nonzero(val > 1e-12)[0]
    a = np.zeros(len(pi), dtype=np.int64)
    if cand.size == 0:
        return 0.0, a
    dens = val[cand] / (fam.w1[cand] / max(fam.c1, 1e-12) + fam.w2[cand] / max(fam.c2, 1e-12) + 1e-15)
    _fill(cand[np.argsort(-dens, kind="stable")], val, fam.w1, fam.w2, fam.c1, fam.c2, need, a)
    return float(np.dot(val, a)), a


def _price(fam: _PricingFamily, pi: np.ndarray, lam_c: np.ndarray, need: np.ndarray) -> tuple[float, np.ndarray]:
    """The pricing heuristic of column generation (normalised-density greedy, integer amounts).

    A variant ordered by the LP relaxation's reduced density (v − y2·w2)/w1 found near-exact patterns
    (within 0.5 % of the knapsack bound on the 1,000-adapter Zipf family) but tripled the time per
    round without changing the plan or the bound there, so the cheap greedy is kept.
    """
    return _price_fast(fam, pi, lam_c, need)


class _LpMaster:
    """Restricted master LP in highspy (columns added incrementally)."""

    def __init__(self, need: Sequence[int] | np.ndarray, avail: Sequence[int], big: float) -> None:
        import highspy

        self.h = highspy.Highs()
        self.h.setOptionValue("output_flag", False)
        self.nc, self.nt = len(need), len(avail)
        inf = highspy.kHighsInf
        for c in range(self.nc):
            self.h.addRow(float(need[c]), inf, 0, np.array([], dtype=np.int32), np.array([], dtype=float))
        for t in range(self.nt):
            self.h.addRow(-inf, float(avail[t]), 0, np.array([], dtype=np.int32), np.array([], dtype=float))
        for c in range(self.nc):  # artificial cover, priced out as columns arrive
            self.h.addCol(big, 0.0, inf, 1, np.array([c], dtype=np.int32), np.array([1.0]))
        self.n_art = self.nc

    def add(self, col: Column, weight: float) -> None:
        import highspy

        idx = [c for c, k in enumerate(col.counts) if k] + [self.nc + col.gtype]
        val = [float(col.counts[c]) for c in idx[:-1]] + [1.0]
        self.h.addCol(weight, 0.0, highspy.kHighsInf, len(idx), np.array(idx, dtype=np.int32), np.array(val))

    def solve(self) -> tuple[float, np.ndarray, np.ndarray]:
        self.h.run()
        sol = self.h.getSolution()
        duals = np.array(sol.row_dual)
        return float(self.h.getInfo().objective_function_value), duals[: self.nc], duals[self.nc :]


def _rep_problem(problem: Problem) -> Problem:
    """The problem with every adapter at its class's representative rate (for a column-valid warm start)."""
    rep = {i: c.rate_rps for c in problem.classes for i in c.members}
    ads = tuple(replace(a, rate_rps=rep[a.index]) for a in problem.adapters)
    return replace(problem, adapters=ads)


def _column_of(problem: Problem, g: GpuAssignment, class_of: Sequence[int]) -> Column:
    counts = [0] * len(problem.classes)
    for i in g.adapter_indices:
        counts[class_of[i]] += 1
    return Column(g.type_index, g.max_lora_rank, g.max_loras, tuple(counts))


def map_columns(
    problem: Problem,
    oracle: CapacityOracle,
    columns: Sequence[Column],
    x: dict[int, int],
    deadline: Deadline | None = None,
) -> list[GpuAssignment]:
    """Named adapters for every GPU of the integer solution (hottest first, dealt across GPUs).
    Raises :class:`~.problem.TimeLimitReached` if ``deadline`` passes before every GPU is built."""
    gpu_cols: list[Column] = []
    for p in sorted(x):
        gpu_cols += [columns[p]] * x[p]
    members: list[list[int]] = [[] for _ in gpu_cols]
    for c in problem.classes:
        slots = [(g, col.counts[c.index]) for g, col in enumerate(gpu_cols) if col.counts[c.index]]
        left = {g: k for g, k in slots}
        it = iter(c.members)
        done = False
        while not done and any(left.values()):
            for g, _ in slots:
                if left[g] <= 0:
                    continue
                i = next(it, None)
                if i is None:
                    done = True
                    break
                members[g].append(i)
                left[g] -= 1
        rest = list(it)
        if rest:  # cannot happen when the cover constraints hold
            raise RuntimeError(f"class {c.index}: {len(rest)} adapters left unmapped")
    out = []
    for g, (col, idx) in enumerate(zip(gpu_cols, members)):
        if idx:
            if deadline is not None:
                deadline.check(f"mapping the integer master's solution, GPU {g} of {len(gpu_cols)}")
            out.append(assign_gpu(problem, oracle, col.gtype, idx, g))
    return out


@dataclass(frozen=True, slots=True)
class MilpOutcome:
    gpus: list[GpuAssignment]
    duals: tuple[tuple[Any, ...], list[np.ndarray]] | None  # (classes, dual vectors for the bound)
    log: list[str]


def solve_milp(
    problem: Problem,
    oracle: CapacityOracle,
    weights: Sequence[float],
    time_limit_s: float,
    mip_gap: float,
    backend: str = "highs",
    class_width: float = 0.03,
    deadline: Deadline | None = None,
) -> MilpOutcome:
    """Column generation + integer master (see the module docstring).

    ``deadline`` (default: ``time_limit_s`` from now) bounds every phase: the warm start, column
    generation (first 30 % of the budget), the learned pricing (60 %), the dual ascent (65 %), the
    integer master (what is left of 80 %), mapping and consolidation (the rest). Raises
    :class:`~.problem.TimeLimitReached` when not even the warm start fits; the caller keeps its best
    earlier plan then."""
    t0 = time.perf_counter()
    dl = deadline if deadline is not None else Deadline.begin(time_limit_s)
    log: list[str] = []
    problem = replace(problem, classes=classify(problem.adapters, class_width))
    an = oracle.analytic if hasattr(oracle, "analytic") else AnalyticCapacity(problem)
    if an.problem is not problem:
        an = AnalyticCapacity(problem, kappa=an.kappa)
    classes = problem.classes
    class_of = [0] * problem.n_adapters
    for c in classes:
        for i in c.members:
            class_of[i] = c.index
    need = np.array([c.count for c in classes], dtype=np.int64)
    lam_c = np.array([c.rate_rps for c in classes])
    avail = [min(t.count, problem.gpu_budget()) for t in problem.gpu_types]

    # The learned model behind the oracle, when it is cheap enough to ask per column (the surrogate;
    # not the twin, whose every question is a simulation): columns enter the master only when it
    # accepts them, and the warm start is built on it, so the master chooses among configurations the
    # learned model accepts and its mapped GPUs are not rejected afterwards.
    learned = learned_model(oracle)
    # Warm start: the improved greedy on representative rates (its GPUs are valid columns).
    rep = _rep_problem(problem)
    warm_oracle = learned if learned is not None else AnalyticCapacity(rep, kappa=an.kappa)
    warm_gpus = None
    # The improved greedy costs ~0.1 ms per adapter; when that does not fit a quarter of what is left
    # the fast greedy (class patterns, also column-valid) is the warm start.
    warm_dl = dl.phase("warm start")
    share = warm_dl.part(0.25)
    if share.affords(problem.n_adapters * 1e-4):
        try:
            warm_gpus = greedy_improved(rep, warm_oracle, consolidate_passes=1, deadline=share)
        except TimeLimitReached:
            log.append("improved greedy warm start ran out of its share of the time limit")
    if warm_gpus is None:
        warm_gpus = greedy_fast(rep, warm_oracle, deadline=warm_dl)
    columns: list[Column] = []
    seen: dict[Column, int] = {}

    def add(col: Column) -> int:
        if col not in seen:
            seen[col] = len(columns)
            columns.append(col)
        return seen[col]

    warm: dict[int, int] = {}
    for g in warm_gpus:
        p = add(_column_of(problem, g, class_of))
        warm[p] = warm.get(p, 0) + 1
    log.append(
        f"warm start: {len(warm_gpus)} GPUs from greedy on class-representative rates "
        f"({len(classes)} classes, width {class_width:g})"
    )

    rejected = 0

    def admits(col: Column, mix: Mix) -> bool:
        """A priced column is offered to the master: the learned model (when there is one) accepts it at
        the column's representative rates, else the analytic model."""
        if learned is not None:
            return bool(learned.best_slots(col.gtype, mix).feasible)
        return oracle_check(an, col, mix)

    fams = pricing_families(problem, an)
    # With a learned model the analytic model is only the pre-filter. Its families are priced in every
    # round (cheap, and their patterns are nearly always accepted); after column generation, the
    # families of the oracle's guard -- the analytic model that contains every GPU the learned model
    # accepts (its envelope under the SLO) -- are priced once at the stabilised duals, and a guard
    # pattern the learned model refuses is priced again on the learned model's own encoding
    # (optplace.solver.learned_pricing): the family's best pattern the trees accept. Pricing the guard
    # in every round as well found the same plans on every bench family at 1.5-2x the time.
    guard = getattr(learned, "guard", None) if learned is not None else None
    pricer: LearnedPricer | None = None
    gfams: list[_PricingFamily] = []
    if isinstance(guard, AnalyticCapacity):
        gfams = pricing_families(problem, guard)
        pricer = LearnedPricer(learned, problem, an)
    learned_cols: list[LearnedPattern] = []
    learned_calls = 0
    big = 10.0 * max(weights) * max(1, len(warm_gpus))
    lp = _LpMaster(need, avail, big)
    for col in columns:
        lp.add(col, weights[col.gtype])
    cg_end = dl.until(0.3).phase("column generation")
    duals = None
    it = 0
    lp_obj = math.inf
    warm_value = sum(weights[columns[p].gtype] * k for p, k in warm.items())
    history: list[float] = []
    integral = len(set(weights)) == 1
    # Dual stabilisation (Wentges smoothing): price at a mix of the LP duals and a stability centre,
    # the best duals seen by the (heuristic) Farley value; the pattern LP is very degenerate at an
    # integral warm start, and pricing at the raw LP duals alone stalls.
    w_min = min(weights)

    def farley(pi_: np.ndarray) -> tuple[float, list[tuple[float, np.ndarray, _PricingFamily]]]:
        priced = [(*_price(f, pi_, lam_c, need), f) for f in fams]
        ratio = min((weights[f.gtype] / v for v, _, f in priced if v > 0), default=math.inf)
        return (float(np.dot(pi_, need)) * ratio if math.isfinite(ratio) else 0.0), priced

    center = lam_c * (1.0 / max(lam_c.max(), 1e-12))
    f_center, _ = farley(center)
    center = center * (f_center / max(float(np.dot(center, need)), 1e-12))
    f_checked = -1.0
    while not cg_end.expired() and it < 300:
        it += 1
        lp_obj, pi, mu = lp.solve()
        duals = np.maximum(pi, 0.0)
        history.append(lp_obj)
        if integral and math.ceil(f_center / w_min - 1e-6) * w_min >= warm_value - 1e-9 and f_center != f_checked:
            # The heuristic Farley value suggests the warm start is optimal; prove it with the valid
            # Lagrangian bound at the same duals before stopping.
            from optplace.solver.bound import lagrangian_bound

            f_checked = f_center
            lb = lagrangian_bound(problem, guard if isinstance(guard, AnalyticCapacity) else an, center, weights)
            if math.ceil(lb / w_min - 1e-6) * w_min >= warm_value - 1e-9:
                log.append(f"stopped: the Lagrangian bound {lb:.3f} proves the warm start optimal")
                break
        if len(history) > 40 and history[-41] - lp_obj < 0.002 * max(lp_obj, 1e-9):
            break
        if (
            integral
            and len(history) > 20
            and math.ceil(history[-21] / w_min - 1e-6) == math.ceil(lp_obj / w_min - 1e-6)
        ):
            break  # 20 rounds without moving the LP's rounded-up value
        added = 0
        for alpha in (0.5, 0.0):
            pi_s = alpha * center + (1.0 - alpha) * duals
            f_s, priced = farley(pi_s)
            if f_s > f_center:
                center, f_center = pi_s, f_s
            found: list[tuple[float, Column]] = []
            for _, a, fam in priced:
                red = weights[fam.gtype] - mu[fam.gtype] - float(np.dot(duals, a))
                if red < -1e-7 * max(1.0, weights[fam.gtype]):
                    found.append((red, Column(fam.gtype, fam.rank_max, fam.slots, tuple(int(v) for v in a))))
            found.sort(key=lambda f: f[0])
            for _, col in found:
                if col in seen:
                    continue
                mix = Mix.of_counts(classes, col.counts)
                if not admits(col, mix):
                    rejected += 1
                    continue
                add(col)
                lp.add(col, weights[col.gtype])
                added += 1
                if added >= 25:
                    break
            if added:
                break
        if added == 0:
            break
    if pricer is not None:
        # The guard's families whose pattern at the stabilised duals the learned model refused, priced
        # again on its encoding (best dual value per unit of weight first): like the other patterns
        # priced at those duals they go to the integer master whether or not the LP wanted them.
        refused = []
        guard_added = 0
        learned_dl = dl.until(0.6).phase("learned pricing")
        for k, fam in enumerate(gfams):
            if learned_dl.expired():
                break
            v, a = _price(fam, center, lam_c, need)
            col = Column(fam.gtype, fam.rank_max, fam.slots, tuple(int(x) for x in a))
            if v <= 0 or col in seen:
                continue
            # asked at the family's own slot count only (the slot scan of admits() costs ~10-30x more
            # over the few hundred guard families, and the pattern was priced for these slots)
            if learned.evaluate(fam.gtype, Mix.of_counts(classes, col.counts), fam.slots).feasible:  # type: ignore[union-attr]
                add(col)
                lp.add(col, weights[col.gtype])
                guard_added += 1
            else:
                refused.append((-v / weights[fam.gtype], k, col.counts))
        log.append(f"{guard_added} columns priced on the {learned.name} oracle's guard added")  # type: ignore[union-attr]
        for k, pat in _learned_columns(pricer, gfams, refused, center, need, learned_dl):
            learned_calls += 1
            if pat is not None and pat.counts and pat.accepted:
                f = gfams[k]
                col = Column(f.gtype, f.rank_max, f.slots, pat.counts)
                if col not in seen:
                    add(col)
                    lp.add(col, weights[col.gtype])
                    learned_cols.append(pat)
    # Farley-value ascent from the centre (projected multiplicative subgradient steps): the LP duals
    # at a degenerate optimum are extreme and give a weak bound; the best few ascended duals go to
    # the bound, which re-checks each with its valid knapsack upper bounds.
    asc_cols: list[Column] = []
    asc = ascend_duals(
        center,
        fams,
        lam_c,
        need,
        weights,
        iters=30,
        deadline=dl.until(0.65).phase("dual ascent"),
        keep=1,
        patterns=asc_cols,
    )
    # LP duals at a degenerate optimum are extreme (weak bound); the centre and the ascended duals
    # are the candidates worth the valid bound's cost.
    dual_sets = [d for d in (center, *asc) if d is not None]
    # The LP is degenerate at the integral warm start; patterns priced at the stabilised duals are the
    # load-efficient ones, so they all go to the integer master whether or not the LP wanted them.
    extra = 0
    cands = [Column(fam.gtype, fam.rank_max, fam.slots, tuple(int(v) for v in a)) for _, a, fam in farley(center)[1]]
    for col in cands + asc_cols:
        if col not in seen and sum(col.counts) > 0:
            if admits(col, Mix.of_counts(classes, col.counts)):
                add(col)
                extra += 1
            else:
                rejected += 1
    log.append(f"{extra} columns priced at the stabilised and ascended duals added for the integer master")
    if learned is not None:
        log.append(f"{rejected} priced columns refused by the {learned.name} model (not offered to the master)")
    if pricer is not None:
        agree = sum(p.agrees for p in learned_cols)
        log.append(
            f"learned pricing: {learned_calls} solves on the {learned.name} model's encoding, "  # type: ignore[union-attr]
            f"{len(learned_cols)} columns entered the master ({agree} at a fixed point, the MILP's scores "
            f"equal to the model's)"
        )
    log.append(
        f"column generation: {it} LP rounds, {len(columns)} columns, LP value {lp_obj:.3f} "
        f"({time.perf_counter() - t0:.2f} s)"
    )

    # The master gets what is left of 80 % of the limit: mapping, consolidation and the bound follow.
    master_dl = dl.until(0.8).phase("integer master")
    remaining = master_dl.remaining()
    solver = solve_master_pulp if backend == "pulp" else solve_master_pyomo
    t_master = time.perf_counter()
    if master_dl.affords(0.2):
        res = solver(columns, need.tolist(), avail, weights, warm, remaining, mip_gap)
        if res.status == "time_limit":
            master_dl.cut()  # stopped by its time limit: its incumbent depends on the machine's speed
    else:
        res = MasterResult({}, f"skipped (time limit: {max(0.0, remaining):.2f} s left of its share)", math.inf)
    log.append(
        f"integer master ({'PuLP+CBC' if backend == 'pulp' else 'Pyomo+HiGHS appsi'}): {res.status}, "
        f"objective {res.objective:.3f} "
        f"vs warm start {sum(weights[columns[p].gtype] * k for p, k in warm.items()):.3f} "
        f"({time.perf_counter() - t_master:.2f} s of {max(0.0, remaining):.2f} s)"
    )
    x = res.x if res.x and res.objective <= sum(weights[columns[p].gtype] * k for p, k in warm.items()) + 1e-9 else warm
    gpus = map_columns(problem, oracle, columns, x, dl.phase("mapping"))
    bad = [g for g in gpus if not g.feasible]
    if bad:
        log.append(f"{len(bad)} mapped GPUs rejected by the {oracle.name} oracle; keeping the warm start")
        gpus = map_columns(problem, oracle, columns, warm, dl.phase("mapping"))
    gpus = consolidate(problem, oracle, gpus, deadline=dl.phase("consolidation"))
    return MilpOutcome(gpus, (problem.classes, dual_sets) if dual_sets else None, log)


def _learned_columns(
    pricer: LearnedPricer,
    fams: Sequence[_PricingFamily],
    refused: Sequence[tuple[float, int, tuple[int, ...]]],
    pi: np.ndarray,
    need: np.ndarray,
    deadline: Deadline,
) -> list[tuple[int, LearnedPattern | None]]:
    """Price again, on the learned models' encoding, the families whose analytic pattern they refused
    (``refused``: (sort key, family index, pattern); :data:`LEARNED_CALLS` families at most, first
    keys first). Each solve gets at most :data:`LEARNED_CALL_S` of what is left; one the clock stops
    is recorded as a cut."""
    out: list[tuple[int, LearnedPattern | None]] = []
    done: set[int] = set()
    for _, k, counts in sorted(refused, key=lambda r: (r[0], r[1])):
        if len(out) >= LEARNED_CALLS or k in done:
            continue
        done.add(k)
        if not deadline.affords(LEARNED_MIN_S):
            break
        pat = pricer.price(fams[k], pi, need, counts, min(LEARNED_CALL_S, deadline.remaining()))
        if pat is not None and pat.timed_out:
            deadline.cut("learned pricing")
        out.append((k, pat))
    return out


def ascend_duals(
    start: np.ndarray,
    fams: Sequence[_PricingFamily],
    lam_c: np.ndarray,
    need: np.ndarray,
    weights: Sequence[float],
    iters: int = 30,
    deadline: Deadline | None = None,
    keep: int = 3,
    patterns: list[Column] | None = None,
) -> list[np.ndarray]:
    """Heuristic ascent on the Farley value F(π) = π·n / maxₜ(m_t(π)/w_t), m_t = best pattern value on
    type t (ratio-greedy pricing); returns the ``keep`` best dual vectors seen. The best pattern of
    each family at each step is appended to ``patterns`` (if given): candidate columns. Stops after
    ``iters`` steps, or earlier at ``deadline`` (a cut it records)."""
    pi = np.maximum(np.asarray(start, dtype=float), 1e-9)
    seen: list[tuple[float, np.ndarray]] = []
    for it in range(iters):
        if deadline is not None and deadline.expired():
            break
        best_ratio, best_a = 0.0, None
        top: list[tuple[float, np.ndarray, _PricingFamily]] = []
        for f in fams:
            v, a = _price_fast(f, pi, lam_c, need)
            r = v / weights[f.gtype]
            top.append((r, a, f))
            if r > best_ratio:
                best_ratio, best_a = r, a
        if patterns is not None:
            top.sort(key=lambda x: -x[0])
            patterns += [Column(f.gtype, f.rank_max, f.slots, tuple(int(x) for x in a)) for _, a, f in top[:8]]
        if best_a is None or best_ratio <= 0:
            break
        pn = float(pi @ need)
        seen.append((pn / best_ratio, pi.copy()))
        g = need / pn - best_a / float(pi @ best_a)
        step = g * pi
        norm = float(np.abs(step).sum()) or 1.0
        eta = 0.5 / (1.0 + it / 20.0)
        pi = np.maximum(pi * (1.0 + eta * np.clip(step * len(pi) / norm, -0.5, 0.5)), 1e-9)
    seen.sort(key=lambda x: -x[0])
    return [p for _, p in seen[:keep]]


def private_output_lock() -> None:
    """Give this process a lock of its own for Pyomo's solver-output capture (call first thing in a
    forked process that solves).

    Pyomo guards the capture (it redirects the process's stdout/stderr file descriptors around every
    solve) with ``pyomo.common.dependencies.capture_output_lock``, which it turns into a
    ``multiprocessing.Lock`` once multiprocessing is imported: a semaphore a forked child shares with
    its parent. The process planning the split path ahead (:class:`~optplace.infra.executors.Ahead`)
    is stopped with SIGKILL when its plan is not wanted; killed while holding that semaphore, it left
    the parent's next solve waiting 200 s and failing with "Deadlock starting capture_output". A
    process only redirects its own descriptors, so a lock per process loses nothing."""
    import sys
    import threading

    deps = sys.modules.get("pyomo.common.dependencies")
    if deps is not None:
        setattr(deps, "capture_output_lock", threading.Lock())  # noqa: B010 - a module the stubs do not type


def learned_model(oracle: CapacityOracle) -> CapacityOracle | None:
    """The surrogate oracle behind ``oracle`` (itself, or wrapped by a deadline), else None: the
    analytic model needs no second check, and the twin oracle is a simulation per question."""
    from optplace.solver.capacity import SurrogateCapacity

    for cand in (oracle, getattr(oracle, "inner", None)):
        if isinstance(cand, SurrogateCapacity):
            return oracle
    return None


def oracle_check(an: AnalyticCapacity, col: Column, mix: Mix) -> bool:
    """A priced column is feasible for the analytic model at its slots (or at its best slots)."""
    if mix.n == 0:
        return False
    e = an.evaluate(col.gtype, mix, min(col.slots, max(mix.n, 1)) if mix.n <= col.slots else col.slots)
    return e.feasible or an.best_slots(col.gtype, mix).feasible
