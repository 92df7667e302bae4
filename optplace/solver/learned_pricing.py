"""Column pricing on the learned models' MILP encoding: the best pattern of one column family that the
surrogate oracle's own trees accept.

The analytic pricing of :mod:`optplace.solver.milp` finds the pattern of most dual value under the
fluid model's linear form; with a learned oracle that pattern is then asked of the learned models and,
when they refuse it, lost. This module prices the same family on the learned models themselves: the
capacity surrogate's ``starved`` classifier and ``throughput`` regressor and (under the SLO) the SLO
model's ``violates`` classifier, encoded exactly by :class:`~optplace.surrogate.milp_encoding.GbtEncoding`
over the pattern's class counts ``a``:

    max Σ_c π_c a_c   s.t.   starved logit ≤ its threshold,  log delivered fraction ≥ log(1 − max loss),
                             violates logit ≤ its threshold (rates × the SLO's load scale),
                             the family's analytic limits (the fast pre-filter),  a_c ∈ {0..need_c}.

Each feature the trees split on is a linear form of ``a`` (adapter and rank counts, rate and token sums,
expected active and persistent adapters), a ratio of two (``slots_frac``, ``rank_mean``, ``active_frac``,
``persistent_share``: one split is one linear inequality), exactly a maximum (``rate_max``, by one
binary per distinct rate), a ratio whose numerator is exactly a sum of the largest rates
(``rate_top_slots_frac`` with more adapters than slots: the sum of the ``L`` largest rates is the least
of one linear form per rate level, chosen by one binary per level), fixed by the family (``max_loras``,
lengths, burstiness, ``rank_max``: the family's rank must be present) or a monotone map of another
(``rho_kingman`` splits become splits on ``rho_fluid``). Three quantities are not linear in ``a``:
``rate_std``, the fluid model's capacity and service time with fewer adapters than slots (they depend
on ``n``), and the per-octave mean rates the physics features use. They are held
at the values of a reference pattern, and the MILP is solved again at its own solution's values until
they stop moving (a fixed point; :data:`FIXED_POINT_ROUNDS` at most). At a fixed point every feature of
the encoding equals the model's, so the MILP's scores are the model's scores at the chosen pattern:
:class:`LearnedPattern` carries both, and ``agrees`` says whether they match.

Families with more adapters than slots are priced with ``n > slots`` (then ``min(n, slots)`` is the
slot count and the fluid constants are exact); the others with ``n ≤ slots``. Offered loads beyond the
throughput model's training range (``offered_max``, where the oracle rescales) are left out, as are
zero-rate classes (the analytic pricing packs those).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from optplace.solver.capacity import AnalyticCapacity, Mix
from optplace.solver.problem import Problem

#: Re-solves at a new reference pattern before a non-converged answer is given up.
FIXED_POINT_ROUNDS = 4
#: The MILP's and the model's raw scores agree when they differ by no more than this (the same leaves
#: give the same sums up to floating-point order).
RAW_TOL = 1e-6
#: Classes offered to one pricing MILP: its solve time grows steeply with them (310 classes: ~10 s).
CANDIDATES = 24
#: Relative MIP gap of a pricing solve: a column need not be the family's best to improve the master.
PRICING_GAP = 0.02
#: Margin kept from every decision threshold: the model's own comparisons are strict on one side.
_MARGIN = 1e-6


@dataclass(frozen=True, slots=True)
class LearnedPattern:
    """One priced pattern: class counts, the raw scores the MILP computed and the model's own at it,
    whether the oracle accepts it (learned models, guard and slot rule) and what it cost."""

    counts: tuple[int, ...]
    value: float
    rounds: int
    raw_milp: tuple[tuple[str, float], ...]
    raw_model: tuple[tuple[str, float], ...]
    accepted: bool
    solve_s: float
    status: str
    #: whether the clock stopped it (a solve's time limit, or no time for the next fixed-point round)
    timed_out: bool = False

    @property
    def agrees(self) -> bool:
        """Whether the encoding's scores equal the model's at this pattern (a fixed point)."""
        model = dict(self.raw_model)
        return all(abs(v - model[k]) <= RAW_TOL for k, v in self.raw_milp)


@dataclass(frozen=True, slots=True)
class _Reference:
    """The non-linear quantities held fixed in one solve (taken from a reference pattern)."""

    n: int
    rate_std: tuple[float, float]  # at scale 1 and at the SLO scale
    octave_mean: tuple[dict[int, float], dict[int, float]]  # occupied octave → mean rate, per scale


def _retarget_kingman(ens: Any, cv: float) -> Any:
    """``ens`` with its splits on ``rho_kingman`` turned into the equivalent splits on ``rho_fluid``:
    kingman(ρ) = ρc/(1 − ρc)·(1 + cv²)/2 with ρc = min(ρ, 0.99) is non-decreasing in ρ, so
    kingman ≤ t ⇔ ρ ≤ t/(k + t) (k = (1 + cv²)/2) below the cap, and always above it."""
    names = list(ens.feature_names)
    if "rho_kingman" not in names:
        return ens
    src, dst = names.index("rho_kingman"), names.index("rho_fluid")
    k = (1.0 + cv * cv) / 2.0
    top = 0.99 / 0.01 * k
    trees = []
    for t in ens.trees:
        f, thr = t.feature.copy(), t.threshold.copy()
        hit = f == src
        if hit.any():
            tv = thr[hit]
            thr[hit] = np.where(tv >= top, 1e300, tv / (k + np.maximum(tv, -k / 2)))
            f[hit] = dst
            t = replace(t, feature=f, threshold=thr)
        trees.append(t)
    return replace(ens, trees=tuple(trees))


def top_rates_sum(m: Any, lam: np.ndarray, u: np.ndarray, slots: int) -> Any:
    """Add to model ``m`` (integer counts ``m.a[i]`` ≤ ``u[i]`` of classes at rates ``lam``) a variable
    ``m.top`` equal to the sum of the ``slots`` largest rates among the counted adapters, and return it.

    For ``n ≥ slots`` adapters that sum is min over rate levels t of ``slots·t + Σ_i a_i (λ_i − t)⁺``,
    attained at the ``slots``-th largest rate: each form is linear in ``a``, so ``m.top`` is at most every
    form and at least the one a binary picks (one binary per distinct rate)."""
    import pyomo.environ as pyo

    levels = sorted(set(np.asarray(lam, dtype=float).tolist()))
    idx = range(len(lam))
    m.top = pyo.Var(domain=pyo.NonNegativeReals, bounds=(0.0, float((lam * u).sum())))
    m.top_pick = pyo.Var(range(len(levels)), domain=pyo.Binary)
    m.top_cons = pyo.ConstraintList()
    m.top_cons.add(sum(m.top_pick[k] for k in m.top_pick) == 1)
    for k, t in enumerate(levels):
        over = np.maximum(lam - t, 0.0)
        form = slots * t + sum(float(over[i]) * m.a[i] for i in idx if over[i] > 0)
        big = slots * t + float((over * u).sum())  # the form's largest value, so the pick's row is slack
        m.top_cons.add(m.top <= form)
        m.top_cons.add(m.top >= form - big * (1 - m.top_pick[k]))
    return m.top


class LearnedPricer:
    """Prices column families on the learned models of one surrogate oracle (see the module docstring)."""

    def __init__(self, oracle: Any, problem: Problem, an: AnalyticCapacity) -> None:
        self.oracle = oracle
        inner = self._inner = getattr(oracle, "inner", oracle)
        self.problem, self.an = problem, an
        self.classes = problem.classes
        st = problem.stats
        self.mean_in, self.mean_out = st.mean_input_tokens, st.mean_output_tokens
        self.cv, self.bf = st.arrival_cv, st.burst_factor
        self.lam = np.array([c.rate_rps for c in self.classes])
        self.rank = np.array([c.rank for c in self.classes])
        self.surrogates = inner.surrogates
        self.slo_models = inner.slo_models
        self.slo_scale = inner.slo_load_scale
        self.max_loss = problem.constraints.max_throughput_loss
        self._slo_ens: dict[int, Any] = {}

    # -- the model's own view of a pattern -------------------------------------------------------

    def _row(self, counts: Sequence[int], slots: int, scale: float) -> list[float]:
        # the oracle's own (memoised) feature rows: the same row its verdict is computed on
        return self._inner._features(Mix.of_counts(self.classes, counts), scale).row(slots).tolist()

    def model_raw(self, gtype: int, counts: Sequence[int], slots: int) -> dict[str, float]:
        """The learned models' raw scores at a pattern, computed as the oracle computes them."""
        sur = self.surrogates[gtype]
        row = self._row(counts, slots, 1.0)
        out = {k: float(sur.models[k].raw_row(row)) for k in ("starved", "throughput")}
        if self.slo_models is not None:
            slo = self.slo_models[gtype]
            r = slo.full_row(self._row(counts, slots, self.slo_scale))
            out["violates"] = float(slo.models["violates"].raw_row(r))
        return out

    def _reference(self, counts: Sequence[int], slots: int) -> _Reference:
        from optplace.surrogate.features import FEATURE_INDEX, HIST_BINS, HIST_COUNT_NAMES, HIST_SUM_NAMES

        c0, s0 = FEATURE_INDEX[HIST_COUNT_NAMES[0]], FEATURE_INDEX[HIST_SUM_NAMES[0]]
        stds, octs = [], []
        for scale in (1.0, self.slo_scale):
            row = self._row(counts, slots, scale)
            stds.append(row[FEATURE_INDEX["rate_std"]])
            octs.append({b: row[s0 + b] / row[c0 + b] for b in range(HIST_BINS) if row[c0 + b] > 0})
        return _Reference(int(sum(counts)), (stds[0], stds[1]), (octs[0], octs[1]))

    # -- pricing ---------------------------------------------------------------------------------

    def price(
        self,
        fam: Any,
        pi: np.ndarray,
        need: np.ndarray,
        start: Sequence[int],
        time_limit_s: float,
    ) -> LearnedPattern | None:
        """The pattern of family ``fam`` (a :class:`~optplace.solver.milp` pricing family) of most dual
        value ``pi`` that the learned models accept, from the reference pattern ``start`` (the analytic
        pricing's, refused); None when the family has no such pattern or the time runs out first."""
        t0 = time.perf_counter()
        ref_counts = [int(v) for v in start]
        if sum(ref_counts) == 0:
            return None
        seen: set[tuple[int, ...]] = set()
        last: LearnedPattern | None = None
        end = t0 + time_limit_s
        for rnd in range(1, FIXED_POINT_ROUNDS + 1):
            if end - time.perf_counter() <= 0.05:
                if last is not None:
                    last = replace(last, timed_out=True)
                break
            got = self._solve(fam, pi, need, ref_counts, self._reference(ref_counts, fam.slots), end)
            if isinstance(got, str):  # no pattern: infeasible, or stopped by its time limit before one
                if "TimeLimit" in got:
                    last = (
                        replace(last, timed_out=True)
                        if last is not None
                        else LearnedPattern((), 0.0, rnd, (), (), False, time.perf_counter() - t0, got, True)
                    )
                break
            counts, raw_milp, status = got
            raw_model = self.model_raw(fam.gtype, counts, fam.slots)
            mix = Mix.of_counts(self.classes, counts)
            accepted = bool(self.oracle.evaluate(fam.gtype, mix, fam.slots).feasible)
            last = LearnedPattern(
                tuple(counts),
                float(np.dot(pi, counts)),
                rnd,
                tuple(sorted(raw_milp.items())),
                tuple(sorted(raw_model.items())),
                accepted,
                time.perf_counter() - t0,
                status,
                "TimeLimit" in status,
            )
            if last.agrees or tuple(counts) in seen:
                break
            seen.add(tuple(counts))
            ref_counts = list(counts)
        return last

    def _solve(
        self,
        fam: Any,
        pi: np.ndarray,
        need: np.ndarray,
        ref_counts: Sequence[int],
        ref: _Reference,
        end: float,
    ) -> tuple[list[int], dict[str, float], str] | str:
        """One MILP at the reference ``ref``, to be done by ``end`` (a ``time.perf_counter()`` reading:
        building the model counts too): (counts, the encoding's raw scores, status), or the status when
        there is no pattern."""
        from optplace.surrogate.milp_encoding import GbtEncoding

        import pyomo.environ as pyo  # lazy: Pyomo's import costs ~0.5 s

        L, rmax, g = fam.slots, fam.rank_max, fam.gtype
        rot = fam.kind == "rot"
        # candidate classes: allowed, of positive dual value and rate, and fitting the family's limits
        ub = np.minimum(need, np.where(fam.w2 > 0, np.floor(fam.c2 / np.maximum(fam.w2, 1e-300) + 1e-9), need))
        ub = np.minimum(ub, np.where(fam.w1 > 0, np.floor(fam.c1 / np.maximum(fam.w1, 1e-300) + 1e-9), need))
        sel = [c for c in range(len(pi)) if fam.allowed[c] and pi[c] > 1e-12 and self.lam[c] > 0 and ub[c] >= 1]
        if len(sel) > CANDIDATES:
            # the classes of most dual value per unit of the family's limits (the analytic pricing's
            # order), and every class of the reference pattern
            dens = pi[sel] / (fam.w1[sel] / max(fam.c1, 1e-12) + fam.w2[sel] / max(fam.c2, 1e-12) + 1e-15)
            keep = {sel[k] for k in np.argsort(-dens, kind="stable")[:CANDIDATES]}
            keep |= {c for c in sel if ref_counts[c] > 0}
            sel = sorted(keep)
        if not sel or not any(self.rank[c] == rmax for c in sel):
            return "no candidate class"
        lam, rank, u = self.lam[sel], self.rank[sel], ub[sel].astype(int)
        n_lo, n_hi = (L + 1, int(u.sum())) if rot else (1, min(L, int(u.sum())))
        if n_lo > n_hi:
            return "no adapter count fits"
        m = pyo.ConcreteModel()
        idx = range(len(sel))
        m.a = pyo.Var(idx, domain=pyo.Integers, bounds=lambda _, i: (0, int(u[i])))
        m.n = pyo.Var(domain=pyo.Integers, bounds=(n_lo, n_hi))
        m.cons = pyo.ConstraintList()
        m.cons.add(m.n == sum(m.a[i] for i in idx))
        m.cons.add(sum(float(fam.w1[c]) * m.a[i] for i, c in enumerate(sel)) <= fam.c1)
        m.cons.add(sum(float(fam.w2[c]) * m.a[i] for i, c in enumerate(sel)) <= fam.c2)
        m.cons.add(sum(m.a[i] for i in idx if rank[i] == rmax) >= 1)
        # rate_max exactly: one binary per distinct rate, the chosen level used and none above it
        levels = sorted(set(lam.tolist()))
        lev = {v: k for k, v in enumerate(levels)}
        m.v = pyo.Var(range(len(levels)), domain=pyo.Binary)
        m.cons.add(sum(m.v[k] for k in m.v) == 1)
        for i in idx:
            m.cons.add(m.a[i] <= int(u[i]) * sum(m.v[k] for k in range(lev[lam[i]], len(levels))))
        for k, v in enumerate(levels):
            m.cons.add(m.v[k] <= sum(m.a[i] for i in idx if lam[i] == v))
        m.rmx = pyo.Expression(expr=sum(v * m.v[k] for k, v in enumerate(levels)))
        if rot:
            top_rates_sum(m, lam, u, L)
        tok = self.mean_in + self.mean_out
        sur = self.surrogates[g]
        m.cons.add(sum(float(lam[i] * tok) * m.a[i] for i in idx) <= sur.offered_max)

        blocks = {"cap": (1.0, {k: sur.models[k] for k in ("starved", "throughput")}, sur.physics, 0)}
        if self.slo_models is not None:
            slo = self.slo_models[g]
            if g not in self._slo_ens:
                self._slo_ens[g] = _retarget_kingman(slo.models["violates"], self.cv)
            blocks["slo"] = (self.slo_scale, {"violates": self._slo_ens[g]}, slo._phys, 1)
        raw: dict[str, Any] = {}
        for bname, (scale, ens, phys, k_ref) in blocks.items():
            inputs, bounds, fixed = self._features(m, fam, lam, scale, rank, u, ref, k_ref, phys, n_lo, n_hi)
            names = next(iter(ens.values())).feature_names
            enc = GbtEncoding(
                m,
                bname,
                ens,
                bounds={k: v for k, v in bounds.items() if k in names},
                inputs={k: v for k, v in inputs.items() if k in names},
                fixed={k: v for k, v in fixed.items() if k in names},
            )
            raw.update(enc.raw)
        m.ok = pyo.ConstraintList()
        m.ok.add(raw["starved"] <= sur._logit_thr - _MARGIN)
        m.ok.add(raw["throughput"] >= math.log(1.0 - self.max_loss) + _MARGIN)
        if "violates" in raw:
            thr = self.slo_models[g].threshold
            m.ok.add(raw["violates"] <= math.log(thr / (1.0 - thr)) - _MARGIN)
        m.obj = pyo.Objective(expr=sum(float(pi[c]) * m.a[i] for i, c in enumerate(sel)), sense=pyo.maximize)
        from pyomo.contrib.appsi.base import TerminationCondition
        from pyomo.contrib.appsi.solvers import Highs

        opt = Highs()
        opt.config.stream_solver = False
        opt.config.load_solution = False  # none to load when infeasible or stopped before a first one
        left = end - time.perf_counter()
        if left <= 0.05:
            return TerminationCondition.maxTimeLimit.name
        opt.config.time_limit = left
        opt.config.mip_gap = PRICING_GAP
        res = opt.solve(m)
        status = res.termination_condition.name
        if res.best_feasible_objective is None or res.termination_condition == TerminationCondition.infeasible:
            return status
        res.solution_loader.load_vars()
        counts = [0] * len(pi)
        for i, c in enumerate(sel):
            counts[c] = int(round(m.a[i].value))
        return counts, {k: float(pyo.value(v)) for k, v in raw.items()}, status

    def _features(
        self,
        m: Any,
        fam: Any,
        lam0: np.ndarray,
        scale: float,
        rank: np.ndarray,
        u: np.ndarray,
        ref: _Reference,
        k_ref: int,
        phys: Any,
        n_lo: int,
        n_hi: int,
    ) -> tuple[dict[str, Any], dict[str, tuple[float, float]], dict[str, float]]:
        """Every feature the trees may split on, at the candidate classes' rates ``lam0`` × ``scale``: an
        :class:`~optplace.surrogate.milp_encoding.Affine` / :class:`~optplace.surrogate.milp_encoding.Ratio`,
        a linear expression with its bounds, or a fixed value."""
        from optplace.surrogate.features import RANK_BUCKETS, hist_bins
        from optplace.surrogate.milp_encoding import Affine, Ratio
        from optplace.surrogate.physics import WINDOW_S

        L, rmax = fam.slots, fam.rank_max
        rot = fam.kind == "rot"
        lam = lam0 * scale
        idx = range(len(lam))
        inputs: dict[str, Any] = {}
        bounds: dict[str, tuple[float, float]] = {}

        def linear(name: str, coef: np.ndarray) -> None:
            coef = np.asarray(coef, dtype=float)
            if not np.any(coef != 0.0):
                fixed[name] = 0.0
                return
            inputs[name] = sum(float(coef[i]) * m.a[i] for i in idx if coef[i] != 0.0)
            lo = float(np.minimum(coef * u, 0.0).sum())
            bounds[name] = (lo, float(np.maximum(coef * u, 0.0).sum()))

        d = L if rot else max(1, min(ref.n, L))
        lam_star, T = phys.fluid(float(rmax), float(d), float(L), self.mean_in, self.mean_out)
        octave = ref.octave_mean[k_ref]
        mean = np.array([octave.get(int(b), r) for b, r in zip(hist_bins(lam), lam)])
        x = mean * T
        p_act = -np.expm1(-x)
        with np.errstate(over="ignore", divide="ignore"):
            logbusy = np.where(x > 30.0, x, np.log(np.expm1(np.minimum(x, 30.0)))) - np.log(mean)
        pers = ((x > 0) & (logbusy >= math.log(WINDOW_S))).astype(float)
        tok = self.mean_in + self.mean_out
        fixed: dict[str, float] = {
            "max_loras": float(L),
            "rank_max": float(rmax),
            "mean_input_tokens": self.mean_in,
            "mean_output_tokens": self.mean_out,
            "arrival_cv": self.cv,
            "burst_factor": self.bf,
            "rate_std": ref.rate_std[k_ref],
        }
        if rot:
            # the share of the rate the busiest L adapters carry: m.top is exact (see _solve) and the
            # share does not depend on the scale
            inputs["rate_top_slots_frac"] = Ratio(
                m.top,
                sum(float(lam0[i]) * m.a[i] for i in idx),
                (0.0, float((lam0 * u).sum())),
                (float(lam0.min()) * n_lo, float((lam0 * u).sum())),
            )
        else:
            fixed["rate_top_slots_frac"] = 1.0
        inputs["n_adapters"] = Affine(m.n)
        inputs["slots_frac"] = Ratio(float(L), m.n, (float(L), float(L)), (float(n_lo), float(n_hi)))
        inputs["rank_mean"] = Ratio(
            sum(float(rank[i]) * m.a[i] for i in idx),
            m.n,
            (float(rank.min()) * n_lo, float(rank.max()) * n_hi),
            (float(n_lo), float(n_hi)),
        )
        inputs["rate_max"] = scale * m.rmx  # m.rmx: the largest unscaled rate used (exact, see _solve)
        bounds["rate_max"] = (float(lam.min()), float(lam.max()))
        linear("rate_sum", lam)
        linear("offered_tok_s", lam * tok)
        linear("decode_tok_s", lam * self.mean_out)
        buckets = np.minimum(np.searchsorted(np.asarray(RANK_BUCKETS), rank), len(RANK_BUCKETS) - 1)
        for k, b in enumerate(RANK_BUCKETS):
            linear(f"n_rank{b}", (buckets == k).astype(float))
        rho = lam / lam_star if lam_star > 0 else lam * 1e3
        linear("rho_fluid", rho)
        linear("rho_burst", rho * self.bf)
        linear("active_per_slot", p_act / L)
        linear("active_burst", p_act / L * self.bf)
        linear("persistent_per_slot", pers / L)
        act = sum(float(p_act[i]) * m.a[i] for i in idx)
        inputs["active_frac"] = Ratio(act, m.n, (0.0, float((p_act * u).sum())), (float(n_lo), float(n_hi)))
        num = sum(float(pers[i] * lam[i]) * m.a[i] for i in idx if pers[i] > 0)
        inputs["persistent_share"] = Ratio(
            num if pers.any() else 0.0,
            sum(float(lam[i]) * m.a[i] for i in idx),
            (0.0, float((pers * lam * u).sum())),
            (float(lam.min()), float((lam * u).sum())),
        )
        return inputs, bounds, fixed
