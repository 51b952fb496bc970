"""The plots of an experiment's Pareto analysis: one (colour, marker) per configuration or family
that never repeats, and the fronts figure (``fronts.png``) of :mod:`adrpo.experiments.fronts`."""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from adrpo.core.pareto import pareto_front
from adrpo.experiments.fronts import AXIS_TITLES, BASE_LABEL, PairAnalysis, Points, SeedPoints

# Colours and markers of every plot: tab10's ten colours with one marker, then the next marker...
COLORS = 10
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "p", "h", "*")
LABELLED_POINTS = 24  # a panel with more configurations leaves its points unlabelled (the labels would overlap)


def plot_styles(labels: Sequence[str]) -> dict[str, tuple[tuple[float, ...], str]]:
    """A (colour, marker) per label, never the same pair twice.

    Label i gets tab10's colour i mod 10 and marker ``MARKERS[i // 10]`` (up to 120 labels:
    ten colours per marker); past that, a hue stepped by the golden ratio (never the same
    twice) with the markers cycling.
    """
    import matplotlib

    tab10 = matplotlib.colormaps["tab10"]
    styles = {}
    for i, label in enumerate(labels):
        if i < COLORS * len(MARKERS):
            styles[label] = (tuple(tab10(i % COLORS)), MARKERS[i // COLORS])
        else:
            hue = ((i - COLORS * len(MARKERS)) * 0.6180339887498949) % 1.0
            styles[label] = ((*colorsys.hsv_to_rgb(hue, 0.8, 0.85), 1.0), MARKERS[i % len(MARKERS)])
    return styles


def legend_once(ax) -> None:
    """``ax``'s legend with one entry per label: the lines of one family's configurations share theirs."""
    handles, names = ax.get_legend_handles_labels()
    shown = dict(zip(names, handles))  # the first handle of each label
    ax.legend(shown.values(), shown.keys(), fontsize=8, loc="best")


def _mean_std(points: SeedPoints, key: str) -> tuple[float, float]:
    values = np.array([p[key] for p in points.values()], dtype=float)
    return float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else 0.0


def plot_fronts(points: Points, analyses: Sequence[PairAnalysis], path: Path) -> Path:
    """One panel per objective pair: each configuration at its seed mean with seed-std error
    bars (labelled by its settings when the panel has at most :data:`LABELLED_POINTS`), each
    family's non-dominated front over its configuration means and the base model joined by a
    line, the base model in black; one (colour, marker) per family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = plot_styles(list(points.families))
    fig, axes = plt.subplots(1, len(analyses), figsize=(7.5 * len(analyses), 5.8), squeeze=False)
    for ax, analysis in zip(axes[0], analyses):
        o = analysis.objective
        (bx, bsx), (by, bsy) = _mean_std(points.base, o.x), _mean_std(points.base, o.y)
        for family, members in points.families.items():
            kept = [label for label in members if label in analysis.labels]
            if not kept:
                continue
            color, marker = styles[family]
            stats = [(_mean_std(analysis.values[label], o.x), _mean_std(analysis.values[label], o.y)) for label in kept]
            xs, ys = [s[0][0] for s in stats], [s[1][0] for s in stats]
            ax.errorbar(xs, ys, xerr=[s[0][1] for s in stats], yerr=[s[1][1] for s in stats], fmt=marker, color=color,
                        markersize=7, capsize=2, elinewidth=0.8, label=f"{family} ({points.roles[kept[0]]})")
            front = np.array(list(zip(xs, ys)) + [(bx, by)])
            order = pareto_front(front, maximize=o.maximize)
            ax.plot(front[order, 0], front[order, 1], color=color, linewidth=1.2, alpha=0.7)
            for label, x, y in zip(kept, xs, ys) if len(analysis.labels) <= LABELLED_POINTS else ():
                short = label[len(family):].strip(" ()") if label.startswith(family) else label
                if short:
                    ax.annotate(short, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=6, color=color)
        ax.errorbar([bx], [by], xerr=[bsx], yerr=[bsy], fmt="o", color="black", markersize=8, capsize=2, label=BASE_LABEL)
        ax.set_xlabel(AXIS_TITLES.get(o.x, o.x) + " (held-out prompts)")
        placed = "; moving-reference runs: to the base" if analysis.placed_by_base else ""  # their w2_base (fronts.py)
        ax.set_ylabel(AXIS_TITLES.get(o.y, o.y) + " (held-out prompts)" + placed)
        if not o.maximize[1]:  # divergences span decades (W2 0.01 for a leashed run, 6 for RAFT)
            ax.set_yscale("symlog", linthresh=1e-2)
        unlabelled = f"; {len(analysis.labels)} configurations, unlabelled (verdicts.md)" if len(analysis.labels) > LABELLED_POINTS else ""
        ax.set_title(f"{o.title}\nseed mean ± std over {len(points.seeds)} seeds; lines = fronts{unlabelled}", fontsize=10)
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
