"""How sure a per-seed comparison is: the verdict rule, Student's t and the bootstrap interval.

A comparison gives one Δ per seed (S,), NaN where it is undefined (out of range); Δ > 0 is
better. The verdict, exactly as implemented:

- "out of range" unless a strict majority of the seeds is in range (2·n > S, n in range).
- With n ≥ 2: SE = sample std (ddof 1) / √n, and the bar is c·SE with c the two-sided
  Student t quantile at ``level`` for n − 1 degrees of freedom (level 0.95: c = 12.71 for 2
  seeds, 4.303 for 3, 2.776 for 5), so that "beyond" / "behind" mean that the ``level``
  t-interval of the mean Δ lies above / below zero. ``critical`` replaces c by a fixed number
  (2 gives the rule this project used before, about 91 % one-sided confidence at 3 seeds).
- "beyond" when the mean exceeds max(bar, atol) by more than rounding (relative 1e-9), "behind"
  when it falls below −max(bar, atol) by as much, "on" otherwise: a mean that equals its bar up
  to the last bits of a float is not beyond it.
- A single seed (S = 1) has no SE: the sign with the same atol, suffixed " (1 seed)".

Pure Python and numpy; the t distribution by its closed form for integer degrees of freedom
(Abramowitz & Stegun 26.7.3–4), so nothing here needs scipy.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike

from adrpo.errors import ConfigError

BEYOND, ON, BEHIND, OUT_OF_RANGE = "beyond", "on", "behind", "out of range"
SINGLE_SEED = " (1 seed)"
LEVEL = 0.95
"""The default confidence of a verdict: a two-sided 95 % t-interval of the mean Δ."""
REL_TOL = 1e-9
"""How close, relative to the larger of the two, a mean and its bar count as equal."""


def student_t_cdf(t: float, df: int) -> float:
    """P(T ≤ t) for Student's t with ``df`` ≥ 1 (integer) degrees of freedom.

    With θ = atan(t/√df), P(|T| < |t|) is 2θ/π + (2/π)·sinθ·Σ odd terms for odd df and
    sinθ·Σ even terms for even df (A&S 26.7.3–4), each a finite sum of powers of cos θ.

    >>> round(student_t_cdf(2.0, 2), 4), student_t_cdf(0.0, 5)
    (0.9082, 0.5)
    """
    if isinstance(df, bool) or not isinstance(df, int) or df < 1:
        raise ConfigError(f"df must be an int >= 1, got {df!r}")
    theta = math.atan(abs(t) / math.sqrt(df))
    s, c = math.sin(theta), math.cos(theta)
    if df % 2:
        term, total = c, 0.0  # odd: cos θ + (2/3)cos³θ + ... up to cos^(df−2) θ
        for k in range(1, (df - 1) // 2 + 1):
            total += term
            term *= c * c * (2 * k) / (2 * k + 1)
        central = (2 / math.pi) * (theta + (s * total if df > 1 else 0.0))
    else:
        term, total = 1.0, 0.0  # even: 1 + (1/2)cos²θ + (1·3)/(2·4)cos⁴θ + ... up to cos^(df−2) θ
        for k in range(1, df // 2 + 1):
            total += term
            term *= c * c * (2 * k - 1) / (2 * k)
        central = s * total
    return 0.5 + math.copysign(central / 2, t)


def t_quantile(p: float, df: int) -> float:
    """The t with P(T ≤ t) = p for Student's t with ``df`` degrees of freedom, 0 < p < 1
    (bisection on :func:`student_t_cdf` to double precision).

    >>> round(t_quantile(0.975, 2), 3), round(t_quantile(0.975, 1), 3)
    (4.303, 12.706)
    """
    if not 0 < p < 1:
        raise ConfigError(f"p must be in (0, 1), got {p!r}")
    if p < 0.5:
        return -t_quantile(1 - p, df)
    low, high = 0.0, 1.0
    while student_t_cdf(high, df) < p:
        high *= 2
    for _ in range(200):
        mid = (low + high) / 2
        if mid in (low, high):
            break
        low, high = (mid, high) if student_t_cdf(mid, df) < p else (low, mid)
    return high


def critical_value(n: int, *, level: float = LEVEL) -> float:
    """How many SE a mean of ``n`` ≥ 2 values must clear: the two-sided t quantile at ``level``."""
    if not 0 < level < 1:
        raise ConfigError(f"level must be in (0, 1), got {level!r}")
    return t_quantile(1 - (1 - level) / 2, n - 1)


def clears(mean: float, bar: float) -> bool:
    """Whether ``mean`` exceeds ``bar`` (≥ 0) by more than rounding (relative :data:`REL_TOL`)."""
    return mean > bar and not math.isclose(mean, bar, rel_tol=REL_TOL, abs_tol=0.0)


def verdict(deltas: ArrayLike, *, level: float = LEVEL, critical: float | None = None, atol: float = 1e-9) -> str:
    """The verdict word for per-seed Δ (S,), NaN = out of range; the rule is the module's.

    >>> verdict([0.3, 0.4, 0.5]), verdict([0.3, -0.4, 0.5]), verdict([0.1, float("nan"), float("nan")])
    ('beyond', 'on', 'out of range')
    >>> verdict([0.1, 0.3], critical=2.0)  # mean 0.2 against 2·SE = 0.2 up to rounding
    'on'
    """
    d = as_values(deltas)
    if atol < 0 or (critical is not None and critical < 0):
        raise ConfigError(f"critical and atol must be >= 0, got critical={critical}, atol={atol}")
    inside = d[~np.isnan(d)]
    if 2 * inside.size <= d.size:
        return OUT_OF_RANGE
    mean = float(inside.mean())
    if inside.size == 1:
        bar = atol
    else:
        c = critical_value(inside.size, level=level) if critical is None else critical
        bar = max(c * float(inside.std(ddof=1)) / math.sqrt(inside.size), atol)
    word = BEYOND if clears(mean, bar) else BEHIND if clears(-mean, bar) else ON
    return word + SINGLE_SEED if d.size == 1 else word


def bootstrap_ci(values: ArrayLike, *, n_boot: int = 1000, level: float = 0.95, rng_seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of (S,) values, resampling with replacement.

    Deterministic for a given ``rng_seed``: numpy ``default_rng(rng_seed).integers(0, S,
    size=(n_boot, S))`` picks the resamples, and the interval is numpy's (linear) quantiles
    (1 − level)/2 and 1 − (1 − level)/2 of their means. One value gives (v, v).

    >>> bootstrap_ci([2., 2., 2.])
    (2.0, 2.0)
    """
    v = as_values(values)
    if np.isnan(v).any():
        raise ConfigError(f"values must be finite, got {v.tolist()}")
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 1:
        raise ConfigError(f"n_boot must be an int >= 1, got {n_boot!r}")
    if not 0 < level < 1:
        raise ConfigError(f"level must be in (0, 1), got {level!r}")
    idx = np.random.default_rng(rng_seed).integers(0, v.size, size=(n_boot, v.size))  # (n_boot, S)
    tail = (1 - level) / 2
    low, high = np.quantile(v[idx].mean(axis=1), [tail, 1 - tail])
    return float(low), float(high)


def as_values(values: ArrayLike) -> np.ndarray:
    """(S,) float array of per-seed values (NaN allowed, ±inf refused)."""
    d = np.asarray(values, dtype=float)
    if d.ndim != 1 or d.size == 0:
        raise ConfigError(f"per-seed values must be a non-empty (S,) sequence, got shape {d.shape}")
    if np.isinf(d).any():
        raise ConfigError(f"per-seed values must not be infinite, got {d.tolist()}")
    return d
