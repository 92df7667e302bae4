"""MILP encodings of the capacity surrogates as Pyomo components (HiGHS-friendly, no SOS2).

(a) :class:`GbtEncoding` — the exact encoding of tree ensembles (the gradient-boosted-tree
    formulation of Mišić, "Optimization of tree ensembles", Oper. Res. 2020, as also used by OMLT;
    written here from the formulation, not from their code):

    * per feature ``j`` and each distinct split threshold ``t_jk`` (ascending) a binary
      ``y[j,k] = 1 ⇔ x_j ≤ t_jk``, ordered ``y[j,k] ≤ y[j,k+1]``;
    * linking to the continuous feature ``x_j ∈ [L_j, U_j]`` with big-M terms from the bounds:
      ``x_j ≤ t_jk + (U_j − t_jk)(1 − y_jk)`` and ``x_j ≥ t_jk + ε_jk − (t_jk + ε_jk − L_j) y_jk``
      (LightGBM sends ``x ≤ t`` left, so ``x = t`` must give ``y = 1``);
    * per tree, leaf weights ``z ≥ 0`` summing to 1; for every split node,
      Σ z(left subtree) ≤ y and Σ z(right subtree) ≤ 1 − y (this makes z integral given y);
    * the ensemble's raw score is Σ leaf value × z.

    Several ensembles over the same features (throughput + starvation classifier) share ``x`` and
    ``y``.  Optima sit on thresholds; :meth:`GbtEncoding.leaf_box` reads the selected interval of
    every feature from ``y`` and :meth:`GbtEncoding.representative_point` reports its middle, where
    the model's own prediction equals the MILP's value.

(b) :class:`StepEncoding` — the exact piecewise-constant slice of the models over the one integer
    parameter the solver varies for a fixed adapter mix (the adapter count), for each candidate
    ``max_loras``: the models are evaluated at every integer, runs of equal outputs become
    intervals, and one binary per interval selects it (an LP-tight disjunction, so a 1-GPU
    solve takes milliseconds where (a) takes seconds).

(c) :class:`PwlEncoding` — piecewise-linear interpolation of a model over one or two features the
    solver varies (others fixed), from a table of model predictions on a grid: the incremental
    (delta) form with ordering binaries in 1-D, and a triangulated grid with one binary per triangle
    (convex-combination form) in 2-D.  At grid vertices the encoding equals the model exactly.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from optplace.surrogate.trees import Ensemble

_EPS = 1e-5


def _pyo() -> Any:
    import pyomo.environ as pyo  # lazy: Pyomo import costs ~0.5 s

    return pyo


# ----------------------------------------------------------------------------------------------
# (a) exact tree-ensemble encoding


@dataclass(frozen=True)
class Ratio:
    """A feature that is ``num / den`` of two linear Pyomo expressions (``den > 0``).

    Splits on it are linear: ``num/den ≤ t ⇔ num − t·den ≤ 0``; the bounds give the big-M terms.
    Used for ``slots_frac`` (= max_loras / n_adapters) when both are decision variables.  Features
    given the *same* Ratio object share one chain of binaries.
    """

    num: Any
    den: Any
    num_bounds: tuple[float, float]
    den_bounds: tuple[float, float]


@dataclass(frozen=True)
class Affine:
    """A feature that is ``a · var + b`` of one Pyomo variable (``a > 0``).

    All features that are affine in the same variable share one chain of binaries on that variable
    (split ``feature ≤ t`` ⇔ ``var ≤ (t − b)/a``), which keeps the MILP small and tight when, as in
    a single adapter class, the adapter count drives rate sum, offered load and rank counts at once.
    Integer variables get exact thresholds ``var ≤ ⌊(t − b)/a⌋`` (no ε).
    """

    var: Any
    a: float = 1.0
    b: float = 0.0


class GbtEncoding:
    """Exact MILP encoding of one or more tree ensembles sharing their input features.

    ``block`` is a new Pyomo ``Block`` added to ``parent`` under ``name``.  Every feature a tree
    splits on is one of:

    * fixed (``fixed[name]``): its splits are decided at build time, no binaries;
    * ``inputs[name]`` = :class:`Affine` or :class:`Ratio`: splits become thresholds on that
      variable / linear form (chains shared between features);
    * ``inputs[name]`` = any Pyomo linear expression: a feature variable ``x`` is created with
      ``x == expression``;
    * otherwise a free feature variable ``x[name]`` within ``bounds[name]``.

    ``raw[key]`` is the Pyomo expression of ensemble ``key``'s raw score (log-fraction for the
    throughput model, logit for the classifier).
    """

    def __init__(
        self,
        parent: Any,
        name: str,
        ensembles: Mapping[str, Ensemble],
        bounds: Mapping[str, tuple[float, float]],
        inputs: Mapping[str, Any] | None = None,
        fixed: Mapping[str, float] | None = None,
        eps: float = _EPS,
    ) -> None:
        pyo = _pyo()
        self.ensembles = dict(ensembles)
        names = _common_names(self.ensembles.values())
        self.feature_names = names
        fixed = dict(fixed or {})
        inputs = dict(inputs or {})
        self.eps = eps
        thr: dict[int, set[float]] = {}
        for ens in self.ensembles.values():
            for tree in ens.trees:
                for f, v in zip(tree.feature.tolist(), tree.threshold.tolist()):
                    thr.setdefault(f, set()).add(v)
        used = sorted(thr)
        need = [
            names[f]
            for f in used
            if names[f] not in fixed
            and names[f] not in bounds
            and not isinstance(inputs.get(names[f]), (Affine, Ratio))
        ]
        if need:
            raise ValueError(f"bounds needed for features the trees split on: {need}")

        b = pyo.Block(concrete=True)
        parent.add_component(name, b)
        self.block = b
        b.link = pyo.ConstraintList()
        b.order = pyo.ConstraintList()
        # channel: (kind, key) → sorted thresholds in channel units; node map (feature, t) → (channel, k) or bool
        self._route: dict[tuple[int, float], Any] = {}
        chan_thr: dict[Any, set[float]] = {}
        chan_of: dict[int, Any] = {}
        self.x: dict[str, Any] = {}
        self.bounds: dict[str, tuple[float, float]] = {}
        xs = [f for f in used if names[f] not in fixed and not isinstance(inputs.get(names[f]), (Affine, Ratio))]
        b.F = pyo.Set(initialize=xs, ordered=True)
        b.x = pyo.Var(b.F, domain=pyo.Reals, bounds=lambda _, f: tuple(map(float, bounds[names[f]])))
        for f in used:
            nm = names[f]
            if nm in fixed:
                for t in thr[f]:
                    self._route[(f, t)] = bool(fixed[nm] <= t)
                continue
            src = inputs.get(nm)
            if isinstance(src, Affine):
                if src.a <= 0:
                    raise ValueError(f"feature {nm}: Affine needs a > 0 (got {src.a})")
                key = ("affine", id(src.var))
                chan_of[f] = key
                conv = {t: self._var_threshold(src, t) for t in thr[f]}
                chan_thr.setdefault(key, set()).update(conv.values())
                for t in thr[f]:
                    self._route[(f, t)] = (key, conv[t])
                self._chan_src = getattr(self, "_chan_src", {})
                self._chan_src[key] = src.var
            elif isinstance(src, Ratio):
                key = ("ratio", id(src))
                chan_of[f] = key
                chan_thr.setdefault(key, set()).update(thr[f])
                for t in thr[f]:
                    self._route[(f, t)] = (key, t)
                self._chan_src = getattr(self, "_chan_src", {})
                self._chan_src[key] = src
            else:
                key = ("x", f)
                chan_of[f] = key
                chan_thr[key] = set(thr[f])
                for t in thr[f]:
                    self._route[(f, t)] = (key, t)
                self.x[nm] = b.x[f]
                self.bounds[nm] = tuple(map(float, bounds[nm]))  # type: ignore[assignment]
                if src is not None:
                    b.link.add(b.x[f] == src)
        self.channels: dict[Any, list[float]] = {k: sorted(v) for k, v in chan_thr.items()}
        yidx = [(c, k) for c, key in enumerate(self.channels) for k in range(len(self.channels[key]))]
        self._cidx = {key: c for c, key in enumerate(self.channels)}
        b.y = pyo.Var(yidx, domain=pyo.Binary)
        for key, ts in self.channels.items():
            self._link_channel(b, key, ts)
        self._feature_channel = {names[f]: chan_of[f] for f in chan_of}

        self.raw: dict[str, Any] = {}
        b.trees = pyo.Block(list(self.ensembles))
        for ens_name, ens in self.ensembles.items():
            self.raw[ens_name] = self._encode_ensemble(b.trees[ens_name], ens)

    # -- linking -------------------------------------------------------------------------------

    @staticmethod
    def _var_threshold(src: Affine, t: float) -> float:
        tau = (t - src.b) / src.a
        return float(math.floor(tau + 1e-9)) if src.var.is_integer() else tau

    def _y(self, key: Any, k: int) -> Any:
        return self.block.y[self._cidx[key], k]

    def _link_channel(self, b: Any, key: Any, ts: list[float]) -> None:
        kind = key[0]
        if kind == "ratio":
            self._link_ratio(b, key, ts)
            return
        if kind == "x":
            var = b.x[key[1]]
        else:
            var = self._chan_src[key]
        lo, hi = var.lb, var.ub
        if lo is None or hi is None:
            raise ValueError(f"variable {var.name} needs finite bounds for the tree encoding")
        integer = kind == "affine" and var.is_integer()
        for k, t in enumerate(ts):
            y = self._y(key, k)
            if t >= hi:
                y.fix(1)
                continue
            if t < lo:
                y.fix(0)
                continue
            if integer:
                e = 1.0
            else:
                gap = ts[k + 1] - t if k + 1 < len(ts) else math.inf
                e = min(self.eps * max(1.0, abs(t)), 0.5 * gap)
            b.link.add(var <= t + (hi - t) * (1 - y))
            b.link.add(var >= t + e - (t + e - lo) * y)
        for k in range(len(ts) - 1):
            y0, y1 = self._y(key, k), self._y(key, k + 1)
            if not (y0.fixed or y1.fixed):
                b.order.add(y0 <= y1)

    def _link_ratio(self, b: Any, key: Any, ts: list[float]) -> None:
        # y = 1 ⇔ num − t·den ≤ 0, with big-M from the bounds of num and den (den > 0)
        r: Ratio = self._chan_src[key]
        (n_lo, n_hi), (d_lo, d_hi) = r.num_bounds, r.den_bounds
        if d_lo <= 0:
            raise ValueError("ratio feature: denominator lower bound must be > 0")
        for k, t in enumerate(ts):
            y = self._y(key, k)
            if n_hi <= t * d_lo:
                y.fix(1)
                continue
            if n_lo > t * d_hi:
                y.fix(0)
                continue
            e = self.eps * d_lo
            g_lo = n_lo - max(t * d_lo, t * d_hi)
            g_hi = n_hi - min(t * d_lo, t * d_hi)
            b.link.add(r.num - t * r.den <= g_hi * (1 - y))
            b.link.add(r.num - t * r.den >= e - (e - g_lo) * y)
        for k in range(len(ts) - 1):
            y0, y1 = self._y(key, k), self._y(key, k + 1)
            if not (y0.fixed or y1.fixed):
                b.order.add(y0 <= y1)

    # -- trees ---------------------------------------------------------------------------------

    def _encode_ensemble(self, tb: Any, ens: Ensemble) -> Any:
        pyo = _pyo()
        idx = [(i, leaf) for i, t in enumerate(ens.trees) for leaf in range(t.n_leaves)]
        tb.z = pyo.Var(idx, bounds=(0.0, 1.0))
        tb.one = pyo.ConstraintList()
        tb.split = pyo.ConstraintList()
        const = 0.0
        terms: list[Any] = []
        for i, t in enumerate(ens.trees):
            if t.feature.size == 0:
                const += float(t.leaf_value[0])
                tb.z[i, 0].fix(1.0)
                continue
            tb.one.add(sum(tb.z[i, leaf] for leaf in range(t.n_leaves)) == 1)
            left_leaves, right_leaves = _subtree_leaves(t)
            for node in range(t.feature.size):
                route = self._route[(int(t.feature[node]), float(t.threshold[node]))]
                if isinstance(route, bool):  # decided by a fixed feature: close the other side
                    for leaf in right_leaves[node] if route else left_leaves[node]:
                        tb.z[i, leaf].fix(0.0)
                    continue
                key, tc = route
                y = self._y(key, bisect.bisect_left(self.channels[key], tc))
                tb.split.add(sum(tb.z[i, leaf] for leaf in left_leaves[node]) <= y)
                tb.split.add(sum(tb.z[i, leaf] for leaf in right_leaves[node]) <= 1 - y)
            terms.extend((float(v), tb.z[i, leaf]) for leaf, v in enumerate(t.leaf_value.tolist()))
        tb.out = pyo.Expression(expr=const + sum(v * z for v, z in terms if not (z.fixed and z.value == 0)))
        return tb.out

    # -- reading a solution --------------------------------------------------------------------

    def _intervals(self) -> dict[str, tuple[float, float, bool]]:
        out: dict[str, tuple[float, float, bool]] = {}
        for name in self.x:
            key = self._feature_channel[name]
            lo, hi = self.bounds[name]
            open_lo = False
            for k, t in enumerate(self.channels[key]):
                if round(float(self._y(key, k).value)) == 1:
                    hi = min(hi, t)
                elif t >= lo:
                    lo, open_lo = t, True
            out[name] = (lo, hi, open_lo)
        return out

    def leaf_box(self) -> dict[str, tuple[float, float]]:
        """After a solve: per free feature variable, the interval selected by the binaries.

        The interval is ``(lo, hi]`` when ``lo`` is a split threshold, ``[lo, hi]`` when it is the
        feature's lower bound.
        """
        return {n: (lo, hi) for n, (lo, hi, _) in self._intervals().items()}

    def representative_point(self, integer: Sequence[str] = ()) -> dict[str, float]:
        """The middle of the selected leaf region (the integer nearest it for ``integer`` features)."""
        pt: dict[str, float] = {}
        for name, (lo, hi, open_lo) in self._intervals().items():
            mid = 0.5 * (lo + hi)
            if name in integer:
                c_lo = math.floor(lo) + 1 if open_lo else math.ceil(lo)
                c_hi = math.floor(hi)
                if c_lo <= c_hi:
                    mid = float(min(max(round(mid), c_lo), c_hi))
            pt[name] = mid
        return pt


def _common_names(ens: Any) -> tuple[str, ...]:
    names = None
    for e in ens:
        if names is None:
            names = e.feature_names
        elif e.feature_names != names:
            raise ValueError("ensembles encoded together must share their feature list")
    if names is None:
        raise ValueError("no ensemble to encode")
    return names


def _subtree_leaves(t: Any) -> tuple[list[list[int]], list[list[int]]]:
    """For each internal node, the leaves under its left and its right child."""
    n = t.feature.size
    under: dict[int, list[int]] = {}

    def leaves(child: int) -> list[int]:
        if child < 0:
            return [~child]
        if child not in under:
            under[child] = leaves(int(t.left[child])) + leaves(int(t.right[child]))
        return under[child]

    left = [leaves(int(t.left[s])) for s in range(n)]
    right = [leaves(int(t.right[s])) for s in range(n)]
    return left, right


def row_from_point(point: Mapping[str, float], base: Sequence[float], feature_names: Sequence[str]) -> list[float]:
    """A full feature row: ``base`` with the features in ``point`` replaced."""
    row = list(map(float, base))
    for name, v in point.items():
        row[list(feature_names).index(name)] = float(v)
    return row


# ----------------------------------------------------------------------------------------------
# (b) piecewise-linear encodings over a grid of model predictions


@dataclass(frozen=True, slots=True)
class PwlTable:
    """Model predictions on a grid: ``values[i]`` (1-D) or ``values[i, j]`` (2-D)."""

    grids: tuple[tuple[float, ...], ...]
    values: np.ndarray

    def interpolate(self, *x: float) -> float:
        """The PWL function at a point (linear in 1-D; on the same triangulation as the MILP in 2-D)."""
        if len(self.grids) == 1:
            return float(np.interp(x[0], self.grids[0], self.values))
        g1, g2 = self.grids
        i = min(max(bisect.bisect_right(g1, x[0]) - 1, 0), len(g1) - 2)
        j = min(max(bisect.bisect_right(g2, x[1]) - 1, 0), len(g2) - 2)
        u = (x[0] - g1[i]) / (g1[i + 1] - g1[i])
        v = (x[1] - g2[j]) / (g2[j + 1] - g2[j])
        V = self.values
        if u >= v:  # lower triangle (i,j)-(i+1,j)-(i+1,j+1)
            return float(V[i, j] + u * (V[i + 1, j] - V[i, j]) + v * (V[i + 1, j + 1] - V[i + 1, j]))
        return float(V[i, j] + v * (V[i, j + 1] - V[i, j]) + u * (V[i + 1, j + 1] - V[i, j + 1]))


def tabulate(
    predict: Callable[[list[float]], float],
    row_of: Callable[..., Sequence[float]],
    grids: Sequence[Sequence[float]],
) -> PwlTable:
    """Evaluate ``predict(row_of(*point))`` on the grid (1 or 2 axes, ascending breakpoints).

    ``row_of`` builds the full feature row from the varied parameters, so dependent features
    (e.g. rate sum and offered tokens when the adapter count of a fixed mix varies) stay consistent.
    """
    gs = tuple(tuple(float(v) for v in g) for g in grids)
    for g in gs:
        if len(g) < 2 or any(b <= a for a, b in zip(g, g[1:])):
            raise ValueError(f"grid must have ≥ 2 strictly increasing breakpoints, got {g}")
    if len(gs) == 1:
        vals = np.array([predict(list(row_of(a))) for a in gs[0]])
    elif len(gs) == 2:
        vals = np.array([[predict(list(row_of(a, c))) for c in gs[1]] for a in gs[0]])
    else:
        raise ValueError("PWL tables support one or two varied features")
    return PwlTable(gs, vals)


class PwlEncoding:
    """Binary PWL encoding of a :class:`PwlTable`: ``out`` = f(inputs) for inputs on the grid's domain."""

    def __init__(self, parent: Any, name: str, table: PwlTable, inputs: Sequence[Any] | None = None) -> None:
        pyo = _pyo()
        b = pyo.Block(concrete=True)
        parent.add_component(name, b)
        self.block = b
        self.table = table
        if len(table.grids) == 1:
            self._one_d(b, table, inputs)
        else:
            self._two_d(b, table, inputs)

    def _one_d(self, b: Any, table: PwlTable, inputs: Sequence[Any] | None) -> None:
        pyo = _pyo()
        g, v = table.grids[0], table.values
        n = len(g) - 1
        b.S = pyo.RangeSet(0, n - 1)
        b.delta = pyo.Var(b.S, bounds=(0.0, 1.0))
        b.w = pyo.Var(pyo.RangeSet(0, n - 2) if n > 1 else [], domain=pyo.Binary)
        b.x = pyo.Var(bounds=(g[0], g[-1]))
        b.out = pyo.Var()
        b.order = pyo.ConstraintList()
        for i in range(n - 1):
            # incremental form: segment i+1 starts only after segment i is full
            b.order.add(b.delta[i + 1] <= b.w[i])
            b.order.add(b.w[i] <= b.delta[i])
        b.xdef = pyo.Constraint(expr=b.x == g[0] + sum((g[i + 1] - g[i]) * b.delta[i] for i in range(n)))
        b.odef = pyo.Constraint(expr=b.out == float(v[0]) + sum(float(v[i + 1] - v[i]) * b.delta[i] for i in range(n)))
        self.x = [b.x]
        self.out = b.out
        if inputs:
            b.link = pyo.Constraint(expr=b.x == inputs[0])

    def _two_d(self, b: Any, table: PwlTable, inputs: Sequence[Any] | None) -> None:
        pyo = _pyo()
        g1, g2 = table.grids
        V = table.values
        n1, n2 = len(g1), len(g2)
        verts = [(i, j) for i in range(n1) for j in range(n2)]
        tris = [(i, j, s) for i in range(n1 - 1) for j in range(n2 - 1) for s in (0, 1)]
        b.lam = pyo.Var(verts, bounds=(0.0, 1.0))
        b.tri = pyo.Var(tris, domain=pyo.Binary)
        b.x1 = pyo.Var(bounds=(g1[0], g1[-1]))
        b.x2 = pyo.Var(bounds=(g2[0], g2[-1]))
        b.out = pyo.Var()
        b.one_tri = pyo.Constraint(expr=sum(b.tri[t] for t in tris) == 1)
        b.one_lam = pyo.Constraint(expr=sum(b.lam[v] for v in verts) == 1)
        owners: dict[tuple[int, int], list[tuple[int, int, int]]] = {v: [] for v in verts}
        for i, j, s in tris:
            corners = [(i, j), (i + 1, j + 1), (i + 1, j) if s == 0 else (i, j + 1)]
            for c in corners:
                owners[c].append((i, j, s))
        b.own = pyo.ConstraintList()
        for v in verts:
            b.own.add(b.lam[v] <= sum(b.tri[t] for t in owners[v]))
        b.x1def = pyo.Constraint(expr=b.x1 == sum(g1[i] * b.lam[i, j] for i, j in verts))
        b.x2def = pyo.Constraint(expr=b.x2 == sum(g2[j] * b.lam[i, j] for i, j in verts))
        b.odef = pyo.Constraint(expr=b.out == sum(float(V[i, j]) * b.lam[i, j] for i, j in verts))
        self.x = [b.x1, b.x2]
        self.out = b.out
        if inputs:
            b.link = pyo.ConstraintList()
            for xv, e in zip(self.x, inputs):
                b.link.add(xv == e)


def solve(model: Any, time_limit_s: float | None = None, mip_gap: float = 0.0) -> Any:
    """Solve with HiGHS through Pyomo's APPSI interface; returns Pyomo's results object."""
    pyo = _pyo()
    opt = pyo.SolverFactory("appsi_highs")
    opt.config.stream_solver = False
    if time_limit_s is not None:
        opt.config.time_limit = time_limit_s
    opt.config.mip_gap = mip_gap
    return opt.solve(model)


# ----------------------------------------------------------------------------------------------
# (b) exact step (piecewise-constant) slice over an integer parameter


@dataclass(frozen=True, slots=True)
class StepTable:
    """Intervals ``[lo_k, hi_k]`` of an integer parameter ``n`` (per ``second_k``, e.g. ``max_loras``)
    on which every tabulated model output is constant; ``values[name][k]`` is that output."""

    lo: np.ndarray
    hi: np.ndarray
    second: np.ndarray
    values: dict[str, np.ndarray]

    def subset(self, mask: np.ndarray) -> "StepTable":
        """The intervals where ``mask`` holds (e.g. those meeting a constraint on the outputs)."""
        return StepTable(self.lo[mask], self.hi[mask], self.second[mask], {k: v[mask] for k, v in self.values.items()})

    def lookup(self, n: int, second: float) -> dict[str, float]:
        """Outputs at (n, second); KeyError outside the table."""
        m = (self.lo <= n) & (n <= self.hi) & (self.second == second)
        k = np.flatnonzero(m)
        if k.size != 1:
            raise KeyError(f"({n}, {second}) is not in the table")
        return {name: float(v[k[0]]) for name, v in self.values.items()}


def step_table(
    outputs: Mapping[str, Callable[[np.ndarray], np.ndarray]],
    rows_of: Callable[[np.ndarray, int], np.ndarray],
    n_range: tuple[int, int],
    seconds: Sequence[int],
) -> StepTable:
    """Tabulate batch ``outputs`` (e.g. ensembles' ``raw``) at every integer ``n`` in ``n_range``
    (with ``n ≥ second``) for each second parameter in ``seconds``, merging runs of equal outputs.

    ``rows_of(ns, second)`` returns the full feature rows for the integer array ``ns``.
    """
    n0, n1 = n_range
    los: list[int] = []
    his: list[int] = []
    secs: list[float] = []
    vals: dict[str, list[float]] = {k: [] for k in outputs}
    blocks = [(s2, np.arange(max(n0, s2), n1 + 1)) for s2 in sorted({int(v) for v in seconds})]
    blocks = [(s2, ns) for s2, ns in blocks if ns.size]
    if not blocks:
        raise ValueError(f"no (n, second) pair in n_range={n_range} with seconds={list(seconds)}")
    X = np.vstack([rows_of(ns, s2) for s2, ns in blocks])  # one batch call per output
    out_all = np.column_stack([np.asarray(f(X), dtype=np.float64) for f in outputs.values()])
    at = 0
    for s2, ns in blocks:
        out = out_all[at : at + ns.size]
        at += ns.size
        change = np.ones(ns.size, dtype=bool)
        change[1:] = np.any(out[1:] != out[:-1], axis=1)
        starts = np.flatnonzero(change)
        ends = np.append(starts[1:] - 1, ns.size - 1)
        los.extend(ns[starts].tolist())
        his.extend(ns[ends].tolist())
        secs.extend([float(s2)] * starts.size)
        for j, k in enumerate(outputs):
            vals[k].extend(out[starts, j].tolist())
    return StepTable(np.array(los), np.array(his), np.array(secs), {k: np.array(v) for k, v in vals.items()})


class StepEncoding:
    """One binary per interval of a :class:`StepTable`; ``n``, ``second`` and ``out[name]`` follow it."""

    def __init__(self, parent: Any, name: str, table: StepTable) -> None:
        pyo = _pyo()
        b = pyo.Block(concrete=True)
        parent.add_component(name, b)
        self.block = b
        self.table = table
        K = range(len(table.lo))
        b.w = pyo.Var(K, domain=pyo.Binary)
        b.n = pyo.Var(domain=pyo.Integers, bounds=(float(table.lo.min()), float(table.hi.max())))
        b.second = pyo.Var(bounds=(float(table.second.min()), float(table.second.max())))
        b.one = pyo.Constraint(expr=sum(b.w[k] for k in K) == 1)
        b.n_lo = pyo.Constraint(expr=b.n >= sum(float(table.lo[k]) * b.w[k] for k in K))
        b.n_hi = pyo.Constraint(expr=b.n <= sum(float(table.hi[k]) * b.w[k] for k in K))
        b.sdef = pyo.Constraint(expr=b.second == sum(float(table.second[k]) * b.w[k] for k in K))
        b.out = pyo.Expression(
            list(table.values), rule=lambda _, nm: sum(float(table.values[nm][k]) * b.w[k] for k in K)
        )
        self.n = b.n
        self.second = b.second
        self.out = {nm: b.out[nm] for nm in table.values}


# ----------------------------------------------------------------------------------------------
# a 1-GPU problem on either encoding (used by tests and `optplace bench surrogate`)


@dataclass(frozen=True, slots=True)
class OneGpuCapacity:
    """Result of :func:`one_gpu_capacity`: the most adapters of one class a GPU serves."""

    n_adapters: int
    max_loras: int
    throughput_raw: float
    starved_raw: float
    build_s: float
    solve_s: float
    status: str
    encoding: str


def class_rows(
    ns: Sequence[int] | np.ndarray,
    max_loras: int,
    rank: int,
    rate_rps: float,
    mean_input_tokens: float = 223.0,
    mean_output_tokens: float = 196.0,
    arrival_cv: float = 1.0,
    burst_factor: float = 1.0,
) -> np.ndarray:
    """Feature rows of ``n`` equal adapters (one rank, one rate) with ``max_loras`` slots, for each n in ``ns``.

    Equal to :func:`optplace.surrogate.features.feature_row_from_parts` on the expanded lists (tested).
    """
    from optplace.surrogate.features import (
        FEATURE_INDEX,
        FEATURE_NAMES,
        HIST_COUNT_NAMES,
        HIST_SUM_NAMES,
        RANK_BUCKETS,
        hist_bins,
    )

    n = np.asarray(ns, dtype=np.float64)
    X = np.zeros((n.size, len(FEATURE_NAMES)))
    col = FEATURE_INDEX
    k = np.minimum(float(max_loras), n)
    X[:, col["n_adapters"]] = n
    X[:, col["max_loras"]] = max_loras
    X[:, col["slots_frac"]] = max_loras / n
    X[:, col["rate_sum"]] = rate_rps * n
    X[:, col["rate_max"]] = rate_rps
    X[:, col["rate_top_slots_frac"]] = k / n if rate_rps > 0 else 1.0
    X[:, col["rank_max"]] = rank
    X[:, col["rank_mean"]] = rank
    b = RANK_BUCKETS[min(int(np.searchsorted(RANK_BUCKETS, rank)), len(RANK_BUCKETS) - 1)]
    X[:, col[f"n_rank{b}"]] = n
    X[:, col["mean_input_tokens"]] = mean_input_tokens
    X[:, col["mean_output_tokens"]] = mean_output_tokens
    X[:, col["arrival_cv"]] = arrival_cv
    X[:, col["burst_factor"]] = burst_factor
    X[:, col["offered_tok_s"]] = rate_rps * n * (mean_input_tokens + mean_output_tokens)
    X[:, col["decode_tok_s"]] = rate_rps * n * mean_output_tokens
    hb = int(hist_bins(np.array([float(rate_rps)]))[0])
    X[:, col[HIST_COUNT_NAMES[hb]]] = n
    X[:, col[HIST_SUM_NAMES[hb]]] = rate_rps * n
    return X


def one_gpu_capacity(
    surrogate: Any,
    rank: int,
    rate_rps: float,
    slot_cap: int,
    n_max: int = 512,
    slot_candidates: Sequence[int] | None = None,
    mean_input_tokens: float = 223.0,
    mean_output_tokens: float = 196.0,
    arrival_cv: float = 1.0,
    burst_factor: float = 1.0,
    max_loss: float = 0.10,
    encoding: str = "step",
    time_limit_s: float | None = 60.0,
) -> OneGpuCapacity:
    """Largest ``n`` adapters of one class (rank, rate, lengths) on one GPU, and its ``max_loras``.

    Constraints: the classifier says "not starved" and the predicted delivered fraction is
    ≥ 1 − ``max_loss``.  ``encoding="step"`` uses :class:`StepEncoding` over ``n`` for each slot
    candidate (default: every ``max_loras`` in 1..``slot_cap`` that is a power of two or a multiple
    of 32, as vLLM deployments use); ``encoding="gbt"`` the full tree encoding with ``n`` and
    ``max_loras`` as integer decisions and every feature linear in them or a ratio of them.
    """
    import time

    pyo = _pyo()
    from optplace.surrogate.features import RANK_BUCKETS

    thr_m, st_m = surrogate.models["throughput"], surrogate.models["starved"]
    logit = surrogate._logit_thr
    cap = max(1, min(slot_cap, n_max))
    lens = dict(
        mean_input_tokens=mean_input_tokens,
        mean_output_tokens=mean_output_tokens,
        arrival_cv=arrival_cv,
        burst_factor=burst_factor,
    )
    t0 = time.perf_counter()
    m = pyo.ConcreteModel()
    if encoding == "step":
        cands = sorted(
            set(slot_candidates)
            if slot_candidates is not None
            else {c for c in range(1, cap + 1) if (c & (c - 1)) == 0 or c % 32 == 0}
        )
        cands = [c for c in cands if 1 <= c <= cap]
        table = step_table(
            {"throughput": thr_m.raw, "starved": st_m.raw},
            lambda ns, s: class_rows(ns, s, rank, rate_rps, **lens),
            (1, n_max),
            cands,
        )
        # constraints on piecewise-constant outputs are exact filters on the intervals: applying them
        # here leaves an LP-integral choice (the MILP keeps them as constraints too)
        ok = (table.values["starved"] <= logit) & (table.values["throughput"] >= math.log(1.0 - max_loss))
        if not ok.any():
            return OneGpuCapacity(0, 0, math.nan, math.nan, time.perf_counter() - t0, 0.0, "infeasible", encoding)
        enc = StepEncoding(m, "step", table.subset(ok))
        n_var, s_var, raw = enc.n, enc.second, enc.out
    elif encoding == "gbt":
        if getattr(surrogate, "physics", None) is not None:
            raise ValueError(
                "the gbt encoding needs a model over schema features only; this one also splits on "
                "derived (profile physics) features, which are nonlinear in n and max_loras: "
                "use encoding='step' (exact at every candidate slot count)"
            )
        m.n = pyo.Var(domain=pyo.Integers, bounds=(1, n_max))
        m.s = pyo.Var(domain=pyo.Integers, bounds=(1, cap))
        m.s_le_n = pyo.Constraint(expr=m.s <= m.n)
        tok = mean_input_tokens + mean_output_tokens
        bucket = f"n_rank{RANK_BUCKETS[min(int(np.searchsorted(RANK_BUCKETS, rank)), len(RANK_BUCKETS) - 1)]}"
        fixed = {
            "rate_max": rate_rps,
            "rate_std": 0.0,
            "rank_max": float(rank),
            "rank_mean": float(rank),
            "mean_input_tokens": mean_input_tokens,
            "mean_output_tokens": mean_output_tokens,
            "arrival_cv": arrival_cv,
            "burst_factor": burst_factor,
        }
        fixed.update({f"n_rank{b}": 0.0 for b in RANK_BUCKETS if f"n_rank{b}" != bucket})
        ratio = Ratio(m.s, m.n, (1.0, float(cap)), (1.0, float(n_max)))
        inputs = {
            "n_adapters": Affine(m.n),
            "max_loras": Affine(m.s),
            bucket: Affine(m.n),
            "rate_sum": Affine(m.n, rate_rps),
            "offered_tok_s": Affine(m.n, rate_rps * tok),
            "decode_tok_s": Affine(m.n, rate_rps * mean_output_tokens),
            "slots_frac": ratio,
            "rate_top_slots_frac": ratio,
        }
        names = thr_m.feature_names
        g = GbtEncoding(
            m,
            "gbt",
            {"throughput": thr_m, "starved": st_m},
            bounds={},
            inputs={k: v for k, v in inputs.items() if k in names},
            fixed={k: v for k, v in fixed.items() if k in names},
        )
        n_var, s_var, raw = m.n, m.s, g.raw
    else:
        raise ValueError(f"unknown encoding {encoding!r}; valid: step, gbt")
    m.not_starved = pyo.Constraint(expr=raw["starved"] <= logit)
    m.enough = pyo.Constraint(expr=raw["throughput"] >= math.log(1.0 - max_loss))
    m.obj = pyo.Objective(expr=n_var, sense=pyo.maximize)
    build = time.perf_counter() - t0
    t1 = time.perf_counter()
    res = solve(m, time_limit_s)
    solve_s = time.perf_counter() - t1
    status = str(res.solver.termination_condition)
    if n_var.value is None or "infeasible" in status:
        return OneGpuCapacity(0, 0, math.nan, math.nan, build, solve_s, status, encoding)
    return OneGpuCapacity(
        int(round(n_var.value)),
        int(round(s_var.value)),
        float(pyo.value(raw["throughput"])),
        float(pyo.value(raw["starved"])),
        build,
        solve_s,
        status,
        encoding,
    )
