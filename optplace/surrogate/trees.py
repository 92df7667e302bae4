"""Tree ensembles read from LightGBM text models, with fast prediction paths and no LightGBM import.

* :func:`parse_lightgbm_text` reads a LightGBM model file into flat per-tree NumPy arrays
  (:class:`Tree`), the representation the MILP encoder walks as well.
* :meth:`Ensemble.predict_row` evaluates one row through Python code generated from the trees
  (nested conditional expressions, compiled once): ~1 comparison per tree level, no NumPy per call,
  which is what makes a single prediction take microseconds instead of LightGBM's ~100 µs call cost.
* :meth:`Ensemble.predict` evaluates many rows at once (LightGBM's C++ predictor when available,
  else a vectorised NumPy walk).

Both follow LightGBM's numerical split rule exactly: go left when ``x <= threshold``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

# decision_type bits in LightGBM's text format: 1 categorical, 2 default-left, (>>2)&3 missing type
_CATEGORICAL = 1
_MISSING_ZERO = 1


@dataclass(frozen=True, slots=True)
class Tree:
    """One regression tree. Children ``>= 0`` are internal nodes, ``< 0`` are leaves ``~child``."""

    feature: np.ndarray  # int64[n_internal], index into the model's feature list
    threshold: np.ndarray  # float64[n_internal]
    left: np.ndarray  # int64[n_internal]
    right: np.ndarray  # int64[n_internal]
    leaf_value: np.ndarray  # float64[n_leaves]

    @property
    def n_leaves(self) -> int:
        """Number of leaves."""
        return int(self.leaf_value.size)

    def leaf_of(self, x: np.ndarray) -> int:
        """Index of the leaf a single row falls in."""
        if self.feature.size == 0:
            return 0
        node = 0
        while node >= 0:
            node = int(self.left[node] if x[self.feature[node]] <= self.threshold[node] else self.right[node])
        return ~node

    def leaf_paths(self) -> list[list[tuple[int, bool]]]:
        """For each leaf, the (internal node, went_left) pairs on its path from the root."""
        paths: list[list[tuple[int, bool]]] = [[] for _ in range(self.n_leaves)]
        if self.feature.size == 0:
            return paths
        stack: list[tuple[int, list[tuple[int, bool]]]] = [(0, [])]
        while stack:
            node, path = stack.pop()
            for child, went_left in ((int(self.left[node]), True), (int(self.right[node]), False)):
                p = path + [(node, went_left)]
                if child < 0:
                    paths[~child] = p
                else:
                    stack.append((child, p))
        return paths


@dataclass(frozen=True)
class Ensemble:
    """A sum of trees plus an output link (``identity`` or ``sigmoid``) over named features.

    ``row_index[k]`` maps the model's k-th feature to a column of the full feature row, so
    callers always pass rows in :data:`optplace.surrogate.features.FEATURE_NAMES` order.  A model
    over derived features (:data:`~optplace.surrogate.features.DERIVED_NAMES`) carries the
    profile's :class:`~optplace.surrogate.physics.Physics`: a row of ``n_row`` columns is then
    augmented with them first (a caller that already augmented passes the longer row).
    """

    trees: tuple[Tree, ...]
    feature_names: tuple[str, ...]
    row_index: tuple[int, ...]
    link: str = "identity"
    model_text: str = field(default="", repr=False)
    physics: Any = field(default=None, repr=False, compare=False)
    n_row: int = 0
    _fn: Callable[..., float] = field(init=False, repr=False, compare=False)
    _booster: list[Any] = field(init=False, repr=False, compare=False, default_factory=list)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_fn", _compile(self.trees, self.row_index))

    def _augment_row(self, row: Any) -> Any:
        if self.physics is not None and len(row) <= self.n_row:
            row = list(row)
            return row + self.physics.derive_row(row)
        return row

    def raw_row(self, row: list[float]) -> float:
        """Raw score (sum of leaves) of one full feature row given as a list of floats."""
        return self._fn(self._augment_row(row))

    def predict_row(self, row: list[float]) -> float:
        """Prediction (after the link) for one full feature row given as a list of floats."""
        s = self._fn(self._augment_row(row))
        return 1.0 / (1.0 + math.exp(-s)) if self.link == "sigmoid" else s

    def raw(self, X: np.ndarray) -> np.ndarray:
        """Raw scores of many full feature rows, shape (n,)."""
        X = np.asarray(X, dtype=np.float64)
        if self.physics is not None and X.shape[1] <= self.n_row:
            X = self.physics.augment_many(X)
        Xm = X[:, list(self.row_index)]
        if self.model_text:
            b = self._lgb_booster()
            if b is not None:
                return np.asarray(b.predict(Xm, raw_score=True, num_threads=1), dtype=np.float64)
        return self._numpy_raw(Xm)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predictions (after the link) of many full feature rows, shape (n,)."""
        s = self.raw(X)
        return 1.0 / (1.0 + np.exp(-s)) if self.link == "sigmoid" else s

    def _numpy_raw(self, Xm: np.ndarray) -> np.ndarray:
        out = np.zeros(Xm.shape[0])
        rows = np.arange(Xm.shape[0])
        for t in self.trees:
            if t.feature.size == 0:
                out += t.leaf_value[0]
                continue
            node = np.zeros(Xm.shape[0], dtype=np.int64)
            active = np.ones(Xm.shape[0], dtype=bool)
            while active.any():
                a = rows[active]
                nd = node[a]
                go_left = Xm[a, t.feature[nd]] <= t.threshold[nd]
                node[a] = np.where(go_left, t.left[nd], t.right[nd])
                active[a] = node[a] >= 0
            out += t.leaf_value[~node]
        return out

    def _lgb_booster(self) -> Any:
        if not self._booster:
            try:
                import lightgbm as lgb

                self._booster.append(lgb.Booster(model_str=self.model_text))
            except Exception:  # pragma: no cover - LightGBM is a core dependency
                self._booster.append(None)
        return self._booster[0]


def _compile(trees: tuple[Tree, ...], row_index: tuple[int, ...]) -> Callable[[list[float]], float]:
    """Generate ``f(row) -> raw score`` as straight-line Python with one conditional per node."""
    used = sorted({row_index[int(f)] for t in trees for f in t.feature})
    lines = ["def f(row):"]
    if used:
        lines.append("    " + ", ".join(f"x{j}" for j in used) + ", = " + ", ".join(f"row[{j}]" for j in used) + ",")
    lines.append("    s = 0.0")

    def expr(t: Tree, node: int) -> str:
        if node < 0:
            return repr(float(t.leaf_value[~node]))
        j = row_index[int(t.feature[node])]
        return (
            f"({expr(t, int(t.left[node]))} if x{j} <= {float(t.threshold[node])!r} else {expr(t, int(t.right[node]))})"
        )

    for t in trees:
        lines.append(f"    s += {expr(t, 0) if t.feature.size else repr(float(t.leaf_value[0]))}")
    lines.append("    return s")
    ns: dict[str, Any] = {}
    exec(compile("\n".join(lines), "<optplace-surrogate-trees>", "exec"), ns)  # noqa: S102 - our own generated code
    return ns["f"]


def parse_lightgbm_text(text: str) -> list[Tree]:
    """Parse the trees of a LightGBM text model (numerical splits, no zero-as-missing)."""
    trees: list[Tree] = []
    blocks = text.split("\nTree=")[1:]
    for block in blocks:
        body = block.split("\nend of trees")[0]
        kv: dict[str, str] = {}
        for line in body.splitlines()[1:]:
            if "=" in line:
                k, v = line.split("=", 1)
                kv[k.strip()] = v.strip()
        leaf_value = np.array([float(v) for v in kv["leaf_value"].split()], dtype=np.float64)
        if int(kv.get("num_leaves", "1")) <= 1:
            empty = np.zeros(0, dtype=np.int64)
            trees.append(Tree(empty, np.zeros(0), empty, empty, leaf_value[:1]))
            continue
        dt = np.array([int(v) for v in kv["decision_type"].split()], dtype=np.int64)
        if np.any(dt & _CATEGORICAL):
            raise ValueError("categorical splits are not supported by the surrogate tree compiler")
        if np.any(((dt >> 2) & 3) == _MISSING_ZERO):
            raise ValueError("zero-as-missing splits are not supported by the surrogate tree compiler")
        trees.append(
            Tree(
                feature=np.array([int(v) for v in kv["split_feature"].split()], dtype=np.int64),
                threshold=np.array([float(v) for v in kv["threshold"].split()], dtype=np.float64),
                left=np.array([int(v) for v in kv["left_child"].split()], dtype=np.int64),
                right=np.array([int(v) for v in kv["right_child"].split()], dtype=np.int64),
                leaf_value=leaf_value,
            )
        )
    return trees


def ensemble_from_text(
    text: str,
    feature_names: tuple[str, ...],
    row_index: tuple[int, ...],
    link: str = "identity",
    physics: Any = None,
    n_row: int = 0,
) -> Ensemble:
    """Build an :class:`Ensemble` from LightGBM model text (``physics``: see :class:`Ensemble`)."""
    return Ensemble(tuple(parse_lightgbm_text(text)), feature_names, row_index, link, text, physics, n_row)
