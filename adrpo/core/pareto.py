"""Pareto analysis of (configuration × seed) results: fronts, distances to a front, hypervolume.

An *operating point* is one configuration of a method family (one β0, one α) run over seeds;
each run gives metrics such as reward (↑), diversity (↑) and a divergence to the reference (↓:
W2 for flow models, KL for language models). Everything here works on one *objective pair*
(x, y) of metric names, with ``maximize`` saying which way is better on each axis::

    (reward ↑, diversity ↑)    x="reward", y="diversity", maximize=(True, True)
    (reward ↑, divergence ↓)   x="reward", y="w2" (or "kl"), maximize=(True, False)

A minimized coordinate is negated internally, so "better" means "larger" on both axes and every
Δ below is **positive when the method does better than the front**: for a divergence,
Δ = front divergence − method divergence.

Shapes: P points of a set, F of them on its front, M points of the method under test, S seeds.

Rules, exactly as implemented:

- **Front.** p dominates q when p is at least as good on both coordinates and strictly better
  on one. Equal points do not dominate each other, so duplicates all stay on the front; of
  two points with equal x the one with the worse y is dominated.
- **Interpolation.** The front is the polyline through its points ordered by x; its value at x
  is the linear interpolation between the neighbouring points, NaN ("out of range") outside
  [min x, max x], bounds included exactly. A one-point front has a value at its own x only.
- **Paired Δ.** For seed s the front is built from the baseline family's points of seed s plus
  the base model of seed s (pass ``base``; it is in every family's front). Per method point:
  Δ<y> = y − front y at the point's x (ΔD at equal reward) and Δ<x> = x − front x at the
  point's y (ΔR at equal diversity or divergence).
- **Verdict** over the seeds whose Δ is in range: :func:`adrpo.core.significance.verdict`
  ("beyond" / "behind" when the 95 % Student-t interval of the mean Δ lies above / below zero,
  "out of range" unless a strict majority of the seeds is in range, the sign for one seed).
- **Hypervolume** of a set against a reference point given in the metrics' own units: the
  area of the region dominated by the points and bounded by the reference, which must be the
  *worst* corner (below every maximized value, above every minimized one, e.g. above the
  largest divergence); no divergence is negated by the caller. :func:`reference_point` gives
  the worst values across everything; a point not strictly better than the reference on both
  coordinates (e.g. one on its edge) adds no area. Computed per seed, then a percentile
  bootstrap interval of the mean over seeds (seeds resampled with replacement).

numpy, the standard library and :class:`adrpo.errors.ConfigError` only.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from adrpo.core.significance import LEVEL, as_values
from adrpo.core.significance import bootstrap_ci as bootstrap_ci  # re-exported: the statistics live in significance
from adrpo.core.significance import verdict as verdict
from adrpo.errors import ConfigError

Metrics = Mapping[str, float]
"""Metric name -> value of one run, e.g. ``{"reward": 0.71, "diversity": 4.2, "w2": 0.03}``."""
SeedMetrics = Mapping[int, Metrics]
"""Seed -> metrics: one operating point (or the base model) over seeds."""
Family = Mapping[str, SeedMetrics]
"""Operating-point label (e.g. ``"beta0=1.0"``) -> its runs; one method family's sweep."""

@dataclass(frozen=True)
class FrontComparison:
    """One method point against a baseline front, on one coordinate; Δ > 0 is better.

    ``metric`` is the coordinate whose gain Δ is, ``at`` the one held equal (metric="diversity",
    at="reward" is ΔD at equal reward). Mean, std (ddof 1) and SE = std/√n are over the
    ``n_in_range`` seeds whose Δ is defined; NaN where undefined. ``per_seed``: seed -> Δ,
    NaN where the front of that seed does not reach the point.
    """

    label: str
    against: str
    metric: str
    at: str
    delta_mean: float
    delta_std: float
    delta_se: float
    n_seeds: int
    n_in_range: int
    verdict: str
    per_seed: dict[int, float]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict; NaN becomes None."""
        return _jsonable(asdict(self))


@dataclass(frozen=True)
class Hypervolume:
    """A family's hypervolume over seeds: mean, sample std, and a ``level`` bootstrap interval."""

    family: str
    x: str
    y: str
    reference: tuple[float, float]
    mean: float
    std: float
    low: float
    high: float
    level: float
    n_boot: int
    per_seed: dict[int, float]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict; NaN becomes None."""
        return _jsonable(asdict(self))


def pareto_front(points: ArrayLike, *, maximize: Sequence[bool] = (True, True)) -> np.ndarray:
    """Indices of the non-dominated points of a 2-D set, ordered by the first coordinate.

    Equal points do not dominate each other (duplicates all stay); of two points with equal x,
    the worse y is dominated. O(P²), fine for a sweep.

    Args:
        points: (P, 2) points, P ≥ 1, finite.
        maximize: per coordinate, True when larger is better.

    Returns:
        (F,) int indices into ``points``, first coordinate ascending (ties in input order).

    >>> pareto_front([[0., 3.], [1., 1.], [2., 2.], [2., 2.], [3., 0.]]).tolist()
    [0, 2, 3, 4]
    """
    raw = _as_points(points, "points")
    s = raw * _signs(maximize)  # (P, 2), larger is better on both
    at_least = (s[:, None, :] >= s[None, :, :]).all(axis=-1)  # (P, P): [i, j] = i ≥ j on both
    better = (s[:, None, :] > s[None, :, :]).any(axis=-1)  # (P, P): [i, j] = i > j on one
    keep = np.flatnonzero(~(at_least & better).any(axis=0))
    return keep[np.argsort(raw[keep, 0], kind="stable")]


def front_value_at(front_xy: ArrayLike, x: float) -> float:
    """The front's y at x, interpolated linearly between neighbouring front points.

    Args:
        front_xy: (F, 2) front points in any order; equal x must carry equal y.

    Returns:
        y at x, or NaN when x is outside [min x, max x] (out of range).

    >>> front_value_at([[0., 4.], [2., 2.]], 1.)
    3.0
    >>> front_value_at([[0., 4.], [2., 2.]], 2.5)
    nan
    """
    f = _as_points(front_xy, "front_xy")
    if not math.isfinite(x):
        raise ConfigError(f"x must be a finite number, got {x!r}")
    f = f[np.argsort(f[:, 0], kind="stable")]
    clash = (np.diff(f[:, 0]) == 0) & (np.diff(f[:, 1]) != 0)
    if clash.any():
        i = int(np.flatnonzero(clash)[0])
        raise ConfigError(f"front_xy is not a front: x = {f[i, 0]} has two y values, {f[i, 1]} and {f[i + 1, 1]}")
    if not f[0, 0] <= x <= f[-1, 0]:
        return math.nan
    return float(np.interp(x, f[:, 0], f[:, 1]))


def front_deltas(points: ArrayLike, baseline: ArrayLike, *, maximize: Sequence[bool] = (True, True)) -> np.ndarray:
    """How far each point lies beyond the front of ``baseline``, per coordinate; > 0 is better.

    With coordinates sign-flipped so that larger is better and f the front of ``baseline``:
    Δ[:, 1] = y − f_y(x) (gain in y at equal x) and Δ[:, 0] = x − f_x(y) (gain in x at equal
    y); NaN where the front does not reach the point's other coordinate. For a minimized y,
    Δ[:, 1] = front y − point y.

    Args:
        points: (M, 2) points of the method under test (one seed).
        baseline: (P, 2) baseline points of the same seed, base model included.
        maximize: per coordinate, True when larger is better.

    Returns:
        (M, 2) Δ, column j = gain on coordinate j.

    >>> front_deltas([[1., 3.5]], [[0., 4.], [2., 2.]]).tolist()
    [[0.5, 0.5]]
    """
    sign = _signs(maximize)
    s = _as_points(points, "points") * sign  # (M, 2)
    b = _as_points(baseline, "baseline") * sign  # (P, 2)
    f = b[pareto_front(b)]  # (F, 2), x ascending
    deltas = np.empty_like(s)
    for i, (px, py) in enumerate(s):
        deltas[i, 0] = px - front_value_at(f[:, ::-1], py)
        deltas[i, 1] = py - front_value_at(f, px)
    return deltas


def summarize_deltas(
    per_seed: Mapping[int, float], *, label: str, against: str, metric: str, at: str, level: float = LEVEL, critical: float | None = None,
    atol: float = 1e-9,
) -> FrontComparison:
    """Mean ± std, SE and verdict of one point's per-seed Δ (NaN = out of range)."""
    d = as_values(list(per_seed.values()))
    inside = d[~np.isnan(d)]
    mean = float(inside.mean()) if inside.size else math.nan
    std = float(inside.std(ddof=1)) if inside.size > 1 else math.nan
    return FrontComparison(
        label=label, against=against, metric=metric, at=at, delta_mean=mean, delta_std=std,
        delta_se=std / math.sqrt(inside.size) if inside.size > 1 else math.nan,
        n_seeds=int(d.size), n_in_range=int(inside.size), verdict=verdict(d, level=level, critical=critical, atol=atol),
        per_seed={seed: float(v) for seed, v in per_seed.items()},
    )


def compare_to_front(
    method: Family, baseline: Family, *, base: SeedMetrics | None, x: str = "reward", y: str = "diversity",
    maximize: Sequence[bool] = (True, True), against: str = "baseline", level: float = LEVEL, critical: float | None = None,
    atol: float = 1e-9,
) -> list[FrontComparison]:
    """Each method point against the baseline family's front, paired by seed.

    Seed s's front is ``baseline``'s points of seed s plus ``base``'s run of seed s (None: no
    base model). For the best of several baseline families, pass their union. Every point
    and the base model must have the same seeds.

    Returns:
        Per method point, in order: Δ<y> at equal x, then Δ<x> at equal y (for the default
        pair: ΔD at equal reward, ΔR at equal diversity).
    """
    _check_pair(x, y)
    seeds = _common_seeds({"method": method, against: baseline}, base)
    gains: dict[int, np.ndarray] = {}  # seed -> (M, 2)
    for seed in seeds:
        front = _seed_points(baseline, against, seed, x, y, base=base)
        gains[seed] = front_deltas(_seed_points(method, "method", seed, x, y, base=None), front, maximize=maximize)
    records = []
    for i, label in enumerate(method):
        for col, metric, held in ((1, y, x), (0, x, y)):
            records.append(summarize_deltas(
                {seed: gains[seed][i, col] for seed in seeds},
                label=label, against=against, metric=metric, at=held, level=level, critical=critical, atol=atol,
            ))
    return records


def hypervolume_2d(points: ArrayLike, *, reference: Sequence[float], maximize: Sequence[bool] = (True, True)) -> float:
    """Area dominated by ``points`` and bounded by ``reference`` (the worst corner).

    Sweep from the largest x down: each point higher than every point before it adds the
    strip (x − r_x)·(y − previous height). Points not strictly better than the reference on
    both coordinates add nothing.

    Args:
        points: (P, 2) points (dominated ones are allowed and add nothing).
        reference: (2,) the worst corner, in the metrics' own units.
        maximize: per coordinate, True when larger is better.

    >>> hypervolume_2d([[1., 3.], [2., 2.], [3., 1.]], reference=(0., 0.))
    6.0
    """
    sign = _signs(maximize)
    s = _as_points(points, "points") * sign  # (P, 2)
    r = np.asarray(reference, dtype=float)
    if r.shape != (2,) or not np.isfinite(r).all():
        raise ConfigError(f"reference must be two finite numbers, got {reference!r}")
    r = r * sign
    s = s[(s > r).all(axis=1)]
    area, height = 0.0, r[1]
    for px, py in s[np.argsort(-s[:, 0], kind="stable")]:
        if py > height:
            area += (px - r[0]) * (py - height)
            height = py
    return float(area)


def reference_point(
    families: Iterable[Family], *, base: SeedMetrics | None, x: str, y: str, maximize: Sequence[bool] = (True, True)
) -> tuple[float, float]:
    """The worst value of each coordinate over every run of every family and the base model.

    Minimum of a maximized coordinate, maximum of a minimized one: one shared reference keeps
    the families' hypervolumes comparable.
    """
    _check_pair(x, y)
    sign = _signs(maximize)
    runs = [(f"point {label!r}", point) for family in families for label, point in family.items()]
    if base is not None:
        runs.append(("the base model", base))
    pairs = [_pair(name, seed, metrics, x, y) for name, point in runs for seed, metrics in point.items()]
    if not pairs:
        raise ConfigError("reference_point needs at least one run")
    worst = (np.array(pairs) * sign).min(axis=0) * sign
    return float(worst[0]), float(worst[1])


def family_hypervolume(
    family: Family, *, name: str, base: SeedMetrics | None, reference: Sequence[float], x: str = "reward", y: str = "diversity",
    maximize: Sequence[bool] = (True, True), n_boot: int = 1000, level: float = 0.95, rng_seed: int = 0,
) -> Hypervolume:
    """Hypervolume of a family's front per seed (its points plus the base model), then over seeds."""
    _check_pair(x, y)
    seeds = _common_seeds({name: family}, base)
    per_seed = {}
    for seed in seeds:
        points = _seed_points(family, name, seed, x, y, base=base)
        per_seed[seed] = hypervolume_2d(points, reference=reference, maximize=maximize)
    values = np.array(list(per_seed.values()))
    low, high = bootstrap_ci(values, n_boot=n_boot, level=level, rng_seed=rng_seed)
    return Hypervolume(
        family=name, x=x, y=y, reference=(float(reference[0]), float(reference[1])), mean=float(values.mean()),
        std=float(values.std(ddof=1)) if values.size > 1 else math.nan, low=low, high=high, level=level,
        n_boot=n_boot, per_seed=per_seed,
    )


def _signs(maximize: Sequence[bool]) -> np.ndarray:
    if len(maximize) != 2 or not all(isinstance(m, (bool, np.bool_)) for m in maximize):
        raise ConfigError(f"maximize must be two booleans, got {maximize!r}")
    return np.where(np.asarray(maximize), 1.0, -1.0)


def _as_points(points: ArrayLike, name: str) -> np.ndarray:
    arr = np.asarray(points, dtype=float)
    if arr.size == 0:
        raise ConfigError(f"{name} is empty: need at least one point")
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ConfigError(f"{name} must have shape (P, 2), got {arr.shape}")
    if not np.isfinite(arr).all():
        row = int(np.argwhere(~np.isfinite(arr))[0, 0])
        raise ConfigError(f"{name} has a non-finite value in row {row}: {arr[row].tolist()}")
    return arr


def _check_pair(x: str, y: str) -> None:
    if x == y:
        raise ConfigError(f"x and y must be two different metrics, got {x!r} twice")


def _common_seeds(families: Mapping[str, Family], base: SeedMetrics | None) -> list[int]:
    runs: list[tuple[str, SeedMetrics]] = []
    for family_name, family in families.items():
        if not family:
            raise ConfigError(f"{family_name} has no operating points")
        runs += [(f"{family_name} point {label!r}", point) for label, point in family.items()]
    if base is not None:
        runs.append(("the base model", base))
    every = set().union(*(set(point) for _, point in runs))
    for run_name, point in runs:
        if not point:
            raise ConfigError(f"{run_name} has no seeds")
        missing = every - set(point)
        if missing:
            raise ConfigError(
                f"mismatched seeds: {run_name} lacks seed(s) {sorted(missing)} that other runs have; "
                "the comparison is paired by seed, so every point and the base model need the same seeds"
            )
    return sorted(every)


def _pair(run_name: str, seed: int, metrics: Metrics, x: str, y: str) -> tuple[float, float]:
    values = []
    for key in (x, y):
        if key not in metrics:
            raise ConfigError(f"{run_name}, seed {seed}: no metric {key!r} (has {sorted(metrics)})")
        try:
            value = float(metrics[key])
        except (TypeError, ValueError):
            raise ConfigError(f"{run_name}, seed {seed}: {key} = {metrics[key]!r} is not a number") from None
        if not math.isfinite(value):
            raise ConfigError(f"{run_name}, seed {seed}: {key} = {value} is not finite")
        values.append(value)
    return values[0], values[1]


def _seed_points(family: Family, family_name: str, seed: int, x: str, y: str, *, base: SeedMetrics | None) -> np.ndarray:
    """(P, 2) or, with the base model, (P + 1, 2) points of one seed."""
    rows = [_pair(f"{family_name} point {label!r}", seed, point[seed], x, y) for label, point in family.items()]
    if base is not None:
        rows.append(_pair("the base model", seed, base[seed], x, y))
    return np.array(rows)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value
