"""Pareto fronts and verdicts of an experiment's results, and the fronts plot.

The engine's results (``{"spec": ..., "runs": [RunResult dicts]}``) become per-seed operating
points: a configuration's point of seed s is its run's *last* held-out evaluation, the base
model's point of seed s the step-0 evaluation of that seed's runs. For each objective pair

    (reward ↑, diversity ↑) and (reward ↑, divergence ↓),   divergence = w2 (flow) or kl (LLM),

every adaptive configuration (role "adaptive", ADRPO) is compared with
:func:`adrpo.core.pareto.compare_to_front` against the union of all baseline configurations
(role "baseline": fixed-coefficient ORW-CFM-W2 / GRPO) plus the base model, paired by seed, and
every family (any role) gets its hypervolume against one shared :func:`reference_point`.

A configuration that lacks a seed (a failed or missing run) or has a non-finite metric of a
pair is dropped from that analysis with a note; seeds without a step-0 evaluation are dropped
likewise. Nothing here trains or reads files; :func:`plot_fronts` draws the result.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from adrpo.core.pareto import (
    FrontComparison,
    Hypervolume,
    compare_to_front,
    family_hypervolume,
    pareto_front,
    reference_point,
)

BASE_LABEL = "Base"
DIVERGENCE = {"flow": "w2", "llm": "kl"}
AXIS_TITLES = {"reward": "reward ↑", "diversity": "diversity ↑", "w2": "W2 to ref. ↓", "kl": "KL to ref. ↓"}
RULE = (
    "Paired by seed: seed s's front is the union of every baseline (fixed-coefficient) configuration's final point "
    "of seed s and the base model (step 0) of seed s. Δ > 0 is better than the front: more reward or diversity, "
    "less divergence (for a divergence Δ = front − method). Verdict over the seeds whose Δ is in range: beyond if "
    "mean Δ > 2 SE, behind if mean Δ < −2 SE, on otherwise (SE = sample std / √n); out of range unless a strict "
    "majority of the seeds is in range; a single seed gives the sign, marked (1 seed). Hypervolume: per seed, of a "
    "family's configurations plus the base model against one reference point (the worst value of each metric over "
    "every run and the base model), then the mean over seeds with a 95% percentile-bootstrap interval."
)

# Colours and markers of every plot: tab10's ten colours with one marker, then the next marker...
COLORS = 10
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "p", "h", "*")

SeedPoints = dict[int, dict[str, float]]


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


@dataclass(frozen=True)
class Objective:
    """One objective pair: metric names and, per coordinate, whether larger is better."""

    x: str
    y: str
    maximize: tuple[bool, bool]

    @property
    def title(self) -> str:
        return f"{AXIS_TITLES.get(self.x, self.x)} vs {AXIS_TITLES.get(self.y, self.y)}"


# Divergences measured to the trainer's current reference (the flow evaluators' W2), which a moving
# reference moves; the LLM evaluation's KL is to the base model, so moving-reference runs stay in.
TO_CURRENT_REFERENCE = frozenset({"w2"})


def objective_pairs(kind: str) -> tuple[Objective, Objective]:
    """(reward ↑, diversity ↑) and (reward ↑, divergence ↓) of a "flow" or "llm" task."""
    return Objective("reward", "diversity", (True, True)), Objective("reward", DIVERGENCE[kind], (True, False))


@dataclass
class Points:
    """Per-seed final metrics of an experiment's configurations and of the base model."""

    seeds: list[int]
    base: SeedPoints
    configurations: dict[str, SeedPoints]
    families: dict[str, list[str]]
    roles: dict[str, str]
    notes: list[str] = field(default_factory=list)
    moving_reference: set[str] = field(default_factory=set)


def collect_points(results: dict[str, Any]) -> Points:
    """The results' configurations with every seed (others dropped with a note), in run order."""
    runs = results["runs"]
    seeds = list(results.get("spec", {}).get("seeds") or dict.fromkeys(run["seed"] for run in runs))
    base: SeedPoints = {}
    found: dict[str, SeedPoints] = {}
    families: dict[str, list[str]] = {}
    roles: dict[str, str] = {}
    moving: set[str] = set()
    for run in runs:
        label = run["label"]
        roles.setdefault(label, run["role"])
        if run.get("config", {}).get("sync_ref_model"):
            moving.add(label)
        members = families.setdefault(run["family"], [])
        if label not in members:
            members.append(label)
        trajectory = run.get("trajectory") or []
        if not trajectory:
            continue
        found.setdefault(label, {})[run["seed"]] = dict(trajectory[-1])
        if trajectory[0]["step"] == 0:
            base.setdefault(run["seed"], dict(trajectory[0]))
    notes = []
    missing_base = [seed for seed in seeds if seed not in base]
    if missing_base:
        notes.append(f"seed(s) {missing_base} have no step-0 (base model) evaluation and are left out")
        seeds = [seed for seed in seeds if seed in base]
    kept: dict[str, SeedPoints] = {}
    for label in roles:
        missing = [seed for seed in seeds if seed not in found.get(label, {})]
        if missing or not seeds:
            notes.append(f"{label!r} lacks seed(s) {missing} (a failed or missing run) and is left out")
        else:
            kept[label] = {seed: found[label][seed] for seed in seeds}
    families = {family: [label for label in labels if label in kept] for family, labels in families.items()}
    return Points(seeds, {seed: base[seed] for seed in seeds}, kept, {f: ls for f, ls in families.items() if ls}, roles, notes, moving)


def has_both_roles(results: dict[str, Any]) -> bool:
    """Whether the results hold an adaptive and a baseline configuration (the fronts' premise)."""
    roles = {run["role"] for run in results["runs"]}
    return "adaptive" in roles and "baseline" in roles


@dataclass
class PairAnalysis:
    """One objective pair's comparisons (two per adaptive configuration) and hypervolumes."""

    objective: Objective
    labels: list[str]
    baseline: list[str]
    reference: tuple[float, float] | None
    comparisons: list[FrontComparison]
    hypervolumes: list[Hypervolume]
    notes: list[str]

    def to_dict(self) -> dict[str, Any]:
        o = self.objective
        return {
            "x": o.x, "y": o.y, "maximize": list(o.maximize), "configurations": self.labels, "front": self.baseline + [BASE_LABEL],
            "reference": None if self.reference is None else list(self.reference),
            "comparisons": [c.to_dict() for c in self.comparisons], "hypervolumes": [h.to_dict() for h in self.hypervolumes],
            "notes": self.notes,
        }


def _finite(points: SeedPoints, keys: Sequence[str]) -> bool:
    return all(isinstance(p.get(k), (int, float)) and math.isfinite(p[k]) for p in points.values() for k in keys)


def analyse_pair(points: Points, objective: Objective) -> PairAnalysis:
    """Verdicts of every adaptive configuration against the baseline front, and each family's
    hypervolume, on one objective pair (configurations without finite metrics left out)."""
    keys = (objective.x, objective.y)
    notes = []
    labels = []
    for label, seeds in points.configurations.items():
        if objective.y in TO_CURRENT_REFERENCE and label in points.moving_reference:
            notes.append(f"{label!r} has a moving reference: its {objective.y} is to that reference, not to the base model, "
                         "so it is left out of this pair")
        elif _finite(seeds, keys):
            labels.append(label)
        else:
            notes.append(f"{label!r} has a missing or non-finite {objective.x} or {objective.y} and is left out of this pair")
    adaptive = [label for label in labels if points.roles[label] == "adaptive"]
    baseline = [label for label in labels if points.roles[label] == "baseline"]
    if not _finite(points.base, keys) or not adaptive or not baseline:
        notes.append("no comparison: needs a finite base model and at least one adaptive and one baseline configuration")
        return PairAnalysis(objective, labels, baseline, None, [], [], notes)
    pick = {"x": objective.x, "y": objective.y, "maximize": objective.maximize}
    comparisons = compare_to_front(
        {label: points.configurations[label] for label in adaptive}, {label: points.configurations[label] for label in baseline},
        base=points.base, against="baseline front", **pick,
    )
    families = {
        family: {label: points.configurations[label] for label in members if label in labels}
        for family, members in points.families.items()
    }
    families = {family: members for family, members in families.items() if members}
    reference = reference_point(families.values(), base=points.base, **pick)
    hypervolumes = [family_hypervolume(members, name=family, base=points.base, reference=reference, **pick)
                    for family, members in families.items()]
    return PairAnalysis(objective, labels, baseline, reference, comparisons, hypervolumes, notes)


def pareto_analysis(results: dict[str, Any], kind: str) -> tuple[Points, list[PairAnalysis]]:
    """The points and both objective pairs' analyses of an experiment's results."""
    points = collect_points(results)
    return points, [analyse_pair(points, objective) for objective in objective_pairs(kind)]


def _num(value: float | None) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:.4g}"


def _delta_cells(record: FrontComparison) -> list[str]:
    if not math.isfinite(record.delta_mean):
        value = "—"
    elif math.isfinite(record.delta_std):
        value = f"{_num(record.delta_mean)} ± {_num(record.delta_std)}"
    else:
        value = _num(record.delta_mean)
    return [value, f"{record.n_in_range}/{record.n_seeds}", record.verdict]


def verdict_markdown(points: Points, analyses: Sequence[PairAnalysis]) -> str:
    """The verdict and hypervolume tables of every pair, the rule and the notes, as markdown."""
    lines = ["## Pareto verdicts", "", RULE, ""]
    for analysis in analyses:
        o = analysis.objective
        lines += [f"### {o.title}", ""]
        if analysis.comparisons:
            front = ", ".join(analysis.baseline)
            lines += [f"Front, per seed: {front} and the base model.", ""]
            lines += [f"| Configuration | Δ {o.y} at equal {o.x} | in range | verdict | Δ {o.x} at equal {o.y} | in range | verdict |",
                      "|---|---|---|---|---|---|---|"]
            by_label: dict[str, list[FrontComparison]] = {}
            for record in analysis.comparisons:
                by_label.setdefault(record.label, []).append(record)
            for label, (gain_y, gain_x) in by_label.items():
                lines.append(f"| {label} | " + " | ".join(_delta_cells(gain_y) + _delta_cells(gain_x)) + " |")
            lines += ["", "| Family | Role | Hypervolume (mean ± std) | 95% bootstrap interval |", "|---|---|---|---|"]
            for hv in analysis.hypervolumes:
                role = points.roles[points.families[hv.family][0]]
                spread = f"{_num(hv.mean)} ± {_num(hv.std)}" if math.isfinite(hv.std) else _num(hv.mean)
                lines.append(f"| {hv.family} | {role} | {spread} | [{_num(hv.low)}, {_num(hv.high)}] |")
            lines += ["", f"Reference point ({o.x}, {o.y}): ({_num(analysis.reference[0])}, {_num(analysis.reference[1])})."]
        lines += [f"- {note}" for note in analysis.notes]
        lines.append("")
    if points.notes:
        lines += ["Left out of the analysis:"] + [f"- {note}" for note in points.notes] + [""]
    return "\n".join(lines)


def pareto_json(points: Points, analyses: Sequence[PairAnalysis]) -> dict[str, Any]:
    """results.json's "pareto" entry: the rule, the seeds, the notes and every pair's records."""
    return {"rule": RULE, "seeds": points.seeds, "notes": points.notes, "pairs": [a.to_dict() for a in analyses]}


def _mean_std(points: SeedPoints, key: str) -> tuple[float, float]:
    values = np.array([p[key] for p in points.values()], dtype=float)
    return float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else 0.0


def plot_fronts(points: Points, analyses: Sequence[PairAnalysis], path: Path) -> Path:
    """One panel per objective pair: each configuration at its seed mean with seed-std error
    bars, each family's non-dominated front over its configuration means and the base model
    joined by a line, the base model in black; one (colour, marker) per family."""
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
            stats = [(_mean_std(points.configurations[label], o.x), _mean_std(points.configurations[label], o.y)) for label in kept]
            xs, ys = [s[0][0] for s in stats], [s[1][0] for s in stats]
            ax.errorbar(xs, ys, xerr=[s[0][1] for s in stats], yerr=[s[1][1] for s in stats], fmt=marker, color=color,
                        markersize=7, capsize=2, elinewidth=0.8, label=f"{family} ({points.roles[kept[0]]})")
            front = np.array(list(zip(xs, ys)) + [(bx, by)])
            order = pareto_front(front, maximize=o.maximize)
            ax.plot(front[order, 0], front[order, 1], color=color, linewidth=1.2, alpha=0.7)
            for label, x, y in zip(kept, xs, ys):
                short = label[len(family):].strip(" ()") if label.startswith(family) else label
                if short:
                    ax.annotate(short, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=6, color=color)
        ax.errorbar([bx], [by], xerr=[bsx], yerr=[bsy], fmt="o", color="black", markersize=8, capsize=2, label=BASE_LABEL)
        ax.set_xlabel(AXIS_TITLES.get(o.x, o.x) + " (held-out prompts)")
        ax.set_ylabel(AXIS_TITLES.get(o.y, o.y) + " (held-out prompts)")
        if not o.maximize[1]:  # divergences span decades (W2 0.01 for a leashed run, 6 for RAFT)
            ax.set_yscale("symlog", linthresh=1e-2)
        ax.set_title(f"{o.title}: seed mean ± std over {len(points.seeds)} seeds; lines = fronts")
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
