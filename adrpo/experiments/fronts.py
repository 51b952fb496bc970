"""Pareto fronts and verdicts of an experiment's results (the plot: :mod:`adrpo.experiments.front_plots`).

The engine's results (``{"spec": ..., "runs": [RunResult dicts]}``) become per-seed operating
points: a configuration's point of seed s is its run's *last* held-out evaluation, the base
model's point of seed s the step-0 evaluation of that seed's runs. For each objective pair

    (reward ↑, diversity ↑) and (reward ↑, divergence ↓),   divergence = w2 (flow) or kl (LLM),

every adaptive configuration (role "adaptive", ADRPO) is compared with
:func:`adrpo.core.pareto.compare_to_front` against the union of all baseline configurations
(role "baseline": fixed-coefficient ORW-CFM-W2 / GRPO) plus the base model, paired by seed, and
every family (any role) gets its hypervolume against one shared :func:`reference_point`.

What enters, and what is said about it:

- Only finished runs: a run whose last evaluation is before its ``target_step`` (stopped by the
  collapse monitor's ``stop`` policy, or evaluated last before its last step) is left out, named
  in a note. A configuration then lacking a seed, or with a non-finite metric of a pair, is
  dropped from that analysis with a note; seeds without a step-0 evaluation likewise.
- Every run's step-0 evaluation of a seed should be the same base model; where they differ (a
  swept ``guidance_scale``, ``time_shift`` or ``max_completion_length`` changes the evaluation)
  the report says so (:func:`base_differences`), and the first run's is the base point.
- Each configuration carries the collapse monitor's alarms per seed; a *beyond* verdict of a
  configuration one of whose runs alarmed reads "beyond (alarmed)": it may be beyond by
  collapsing onto the reward optimum.
- A moving reference (``sync_ref_model``) moves the flow evaluators' W2; such a run is placed on
  the reward–W2 plane by its W2 to the base model (``w2_base``) when its evaluations log it, and
  is left out of that plane otherwise.

Nothing here trains or reads files.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from adrpo.core.pareto import (
    FrontComparison,
    Hypervolume,
    compare_to_front,
    family_hypervolume,
    reference_point,
)
from adrpo.core.significance import BEYOND, LEVEL

BASE_LABEL = "Base"
DIVERGENCE = {"flow": "w2", "llm": "kl"}
# The LLM evaluations score against their own copy of the base model, never synced: their kl is to the base.
AXIS_TITLES = {"reward": "reward ↑", "diversity": "diversity ↑", "w2": "W2 to ref. ↓", "kl": "KL to base ↓"}
ALARMED = " (alarmed)"
RULE = (
    "Paired by seed: seed s's front is the union of every baseline (fixed-coefficient) configuration's final point "
    "of seed s and the base model (step 0) of seed s. Δ > 0 is better than the front: more reward or diversity, "
    "less divergence (for a divergence Δ = front − method). Verdict over the seeds whose Δ is in range: beyond if "
    f"the two-sided {LEVEL:.0%} Student-t interval of the mean Δ lies above 0 (mean Δ > t·SE, t the quantile for n − 1 "
    "degrees of freedom: 12.71 for 2 seeds, 4.30 for 3; SE = sample std / √n), behind if it lies below 0, on "
    "otherwise; out of range unless a strict majority of the seeds is in range; a single seed gives the sign, marked "
    "(1 seed). \"(alarmed)\": a run of that configuration raised a collapse-monitor alarm (column Monitor: the rules "
    "and seeds). Only finished runs enter. Hypervolume: per seed, of a family's configurations plus the base model "
    "against one reference point (the worst value of each metric over every run and the base model), then the mean "
    "over seeds with a 95% percentile-bootstrap interval."
)
BASE_RTOL = 1e-6
"""Two step-0 evaluations of one seed whose metrics agree to this relative tolerance are the same base model."""

SeedPoints = dict[int, dict[str, float]]


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
BASE_SUFFIX = "_base"
"""``w2_base``: the same divergence to the base model, logged by runs whose reference moves."""


def objective_pairs(kind: str) -> tuple[Objective, Objective]:
    """(reward ↑, diversity ↑) and (reward ↑, divergence ↓) of a "flow" or "llm" task."""
    return Objective("reward", "diversity", (True, True)), Objective("reward", DIVERGENCE[kind], (True, False))


@dataclass
class Points:
    """Per-seed final metrics of an experiment's configurations and of the base model.

    ``alarms``: label -> seed -> the collapse-monitor rules its run raised (sorted; [] for none),
    absent for a configuration whose runs kept no alarm record (monitor off).
    ``base_differences``: one line per seed whose runs' step-0 evaluations differ.
    """

    seeds: list[int]
    base: SeedPoints
    configurations: dict[str, SeedPoints]
    families: dict[str, list[str]]
    roles: dict[str, str]
    notes: list[str] = field(default_factory=list)
    moving_reference: set[str] = field(default_factory=set)
    alarms: dict[str, dict[int, list[str]]] = field(default_factory=dict)
    base_differences: list[str] = field(default_factory=list)

    def alarmed(self, label: str) -> bool:
        return any(self.alarms.get(label, {}).values())


def is_finished(run: dict[str, Any]) -> bool:
    """Whether a run's last held-out evaluation is at its recorded ``target_step``. A run without one is
    not known to have finished and is not: the engine's results always carry it
    (:class:`adrpo.experiments.engine.RunResult`), so only a hand-made result can lack it."""
    trajectory = run.get("trajectory") or []
    target = run.get("target_step")
    return bool(trajectory) and target is not None and trajectory[-1]["step"] >= target


def unfinished_runs(results: dict[str, Any]) -> list[str]:
    """One line per run with a trajectory that stopped short of its target step (or records none)."""
    lines = []
    for run in results["runs"]:
        if run.get("trajectory") and not is_finished(run):
            target = ", no target step recorded" if run.get("target_step") is None else f" of {run['target_step']}"
            lines.append(f"{run['label']!r} seed {run['seed']}: last evaluation at step {run['trajectory'][-1]['step']}{target}")
    return lines


def _same_row(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The numeric metrics two evaluation rows share and disagree on (beyond :data:`BASE_RTOL`)."""
    keys = [k for k in a if k != "step" and k in b and all(isinstance(r[k], (int, float)) for r in (a, b))]
    return [k for k in keys if not math.isclose(a[k], b[k], rel_tol=BASE_RTOL, abs_tol=1e-12)]


def base_differences(results: dict[str, Any]) -> list[str]:
    """Per seed, the runs whose step-0 evaluation differs from that seed's first run's (the base point):
    a line naming the seed, both labels and the metrics with both values."""
    first: dict[int, tuple[str, dict[str, Any]]] = {}
    lines = []
    for run in results["runs"]:
        trajectory = run.get("trajectory") or []
        if not trajectory or trajectory[0]["step"] != 0:
            continue
        seed, row = run["seed"], trajectory[0]
        if seed not in first:
            first[seed] = (run["label"], row)
            continue
        label, base = first[seed]
        differ = _same_row(base, row)
        if differ:
            values = ", ".join(f"{k} {base[k]:.4g} vs {row[k]:.4g}" for k in differ)
            lines.append(f"seed {seed}: {run['label']!r} starts from another step-0 evaluation than {label!r} ({values})")
    return lines


def collect_points(results: dict[str, Any]) -> Points:
    """The results' configurations with every seed (others dropped with a note), in run order;
    unfinished runs are left out (:func:`is_finished`)."""
    runs = results["runs"]
    seeds = list(results.get("spec", {}).get("seeds") or dict.fromkeys(run["seed"] for run in runs))
    base: SeedPoints = {}
    found: dict[str, SeedPoints] = {}
    families: dict[str, list[str]] = {}
    roles: dict[str, str] = {}
    moving: set[str] = set()
    alarms: dict[str, dict[int, list[str]]] = {}
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
        if trajectory[0]["step"] == 0:
            base.setdefault(run["seed"], dict(trajectory[0]))
        if not is_finished(run):
            continue
        found.setdefault(label, {})[run["seed"]] = dict(trajectory[-1])
        if run.get("alarms") is not None:
            alarms.setdefault(label, {})[run["seed"]] = sorted({alarm["rule"] for alarm in run["alarms"]})
    notes = [f"unfinished run, left out: {line}" for line in unfinished_runs(results)]
    missing_base = [seed for seed in seeds if seed not in base]
    if missing_base:
        notes.append(f"seed(s) {missing_base} have no step-0 (base model) evaluation and are left out")
        seeds = [seed for seed in seeds if seed in base]
    kept: dict[str, SeedPoints] = {}
    for label in roles:
        missing = [seed for seed in seeds if seed not in found.get(label, {})]
        if missing or not seeds:
            notes.append(f"{label!r} lacks seed(s) {missing} (a failed, missing or unfinished run) and is left out")
        else:
            kept[label] = {seed: found[label][seed] for seed in seeds}
    families = {family: [label for label in labels if label in kept] for family, labels in families.items()}
    return Points(seeds, {seed: base[seed] for seed in seeds}, kept, {f: ls for f, ls in families.items() if ls}, roles, notes, moving,
                  {label: alarms[label] for label in kept if label in alarms}, base_differences(results))


def has_both_roles(results: dict[str, Any]) -> bool:
    """Whether the results hold an adaptive and a baseline configuration (the fronts' premise)."""
    roles = {run["role"] for run in results["runs"]}
    return "adaptive" in roles and "baseline" in roles


@dataclass
class PairAnalysis:
    """One objective pair's comparisons (two per adaptive configuration) and hypervolumes.

    ``values``: label -> its per-seed points on this pair (a moving-reference run's divergence is
    its ``<divergence>_base`` here); ``placed_by_base``: the labels so placed.
    """

    objective: Objective
    labels: list[str]
    baseline: list[str]
    reference: tuple[float, float] | None
    comparisons: list[FrontComparison]
    hypervolumes: list[Hypervolume]
    notes: list[str]
    values: dict[str, SeedPoints] = field(default_factory=dict)
    placed_by_base: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        o = self.objective
        return {
            "x": o.x, "y": o.y, "maximize": list(o.maximize), "configurations": self.labels, "front": self.baseline + [BASE_LABEL],
            "reference": None if self.reference is None else list(self.reference),
            "comparisons": [c.to_dict() for c in self.comparisons], "hypervolumes": [h.to_dict() for h in self.hypervolumes],
            "placed_by_base_divergence": self.placed_by_base, "notes": self.notes,
        }


def _finite(points: SeedPoints, keys: Sequence[str]) -> bool:
    return all(isinstance(p.get(k), (int, float)) and math.isfinite(p[k]) for p in points.values() for k in keys)


def _to_base(points: SeedPoints, key: str) -> SeedPoints:
    """``points`` with ``key`` read from ``key + "_base"``."""
    return {seed: {**p, key: p[key + BASE_SUFFIX]} for seed, p in points.items()}


def analyse_pair(points: Points, objective: Objective) -> PairAnalysis:
    """Verdicts of every adaptive configuration against the baseline front, and each family's
    hypervolume, on one objective pair (configurations without finite metrics left out)."""
    keys = (objective.x, objective.y)
    notes = []
    values: dict[str, SeedPoints] = {}
    placed_by_base = []
    for label, seeds in points.configurations.items():
        if objective.y in TO_CURRENT_REFERENCE and label in points.moving_reference:
            if not _finite(seeds, [objective.y + BASE_SUFFIX]):
                notes.append(f"{label!r} has a moving reference and no {objective.y}{BASE_SUFFIX} (its {objective.y} is to that "
                             "reference, not to the base model), so it is left out of this pair")
                continue
            seeds = _to_base(seeds, objective.y)
            placed_by_base.append(label)
        if _finite(seeds, keys):
            values[label] = seeds
        else:
            notes.append(f"{label!r} has a missing or non-finite {objective.x} or {objective.y} and is left out of this pair")
    if placed_by_base:
        notes.append(f"placed by their {objective.y} to the base model ({objective.y}{BASE_SUFFIX}; moving reference): "
                     + named(placed_by_base, points))
    labels = list(values)
    adaptive = [label for label in labels if points.roles[label] == "adaptive"]
    baseline = [label for label in labels if points.roles[label] == "baseline"]
    if not _finite(points.base, keys) or not adaptive or not baseline:
        notes.append("no comparison: needs a finite base model and at least one adaptive and one baseline configuration")
        return PairAnalysis(objective, labels, baseline, None, [], [], notes, values, placed_by_base)
    pick = {"x": objective.x, "y": objective.y, "maximize": objective.maximize}
    comparisons = compare_to_front(
        {label: values[label] for label in adaptive}, {label: values[label] for label in baseline},
        base=points.base, against="baseline front", **pick,
    )
    families = {family: {label: values[label] for label in members if label in values} for family, members in points.families.items()}
    families = {family: members for family, members in families.items() if members}
    reference = reference_point(families.values(), base=points.base, **pick)
    hypervolumes = [family_hypervolume(members, name=family, base=points.base, reference=reference, **pick)
                    for family, members in families.items()]
    return PairAnalysis(objective, labels, baseline, reference, comparisons, hypervolumes, notes, values, placed_by_base)


def pareto_analysis(results: dict[str, Any], kind: str) -> tuple[Points, list[PairAnalysis]]:
    """The points and both objective pairs' analyses of an experiment's results."""
    points = collect_points(results)
    return points, [analyse_pair(points, objective) for objective in objective_pairs(kind)]


def _num(value: float | None) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:.4g}"


def shown_verdict(record: FrontComparison, points: Points) -> str:
    """The verdict word, with " (alarmed)" after a *beyond* whose configuration raised a collapse alarm."""
    alarmed = record.verdict.startswith(BEYOND) and points.alarmed(record.label)
    return record.verdict + ALARMED if alarmed else record.verdict


def monitor_cell(label: str, points: Points) -> str:
    """The collapse monitor's verdict on a configuration: "—" (no alarm), "off" (no record) or each rule
    with the seeds that raised it, e.g. ``w2_bound (seeds 0, 2)``."""
    if label not in points.alarms:
        return "off"
    seeds_by_rule: dict[str, list[int]] = {}
    for seed, rules in points.alarms[label].items():
        for rule in rules:
            seeds_by_rule.setdefault(rule, []).append(seed)
    if not seeds_by_rule:
        return "—"
    return "; ".join(f"{rule} (seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))})" for rule, seeds in seeds_by_rule.items())


def _delta_cells(record: FrontComparison, points: Points) -> list[str]:
    if not math.isfinite(record.delta_mean):
        value = "—"
    elif math.isfinite(record.delta_std):
        value = f"{_num(record.delta_mean)} ± {_num(record.delta_std)}"
    else:
        value = _num(record.delta_mean)
    return [value, f"{record.n_in_range}/{record.n_seeds}", shown_verdict(record, points)]


def named(labels: Sequence[str], points: Points, *, most: int = 8) -> str:
    """``labels`` as a sentence: each one quoted when there are at most ``most``, else counted by family
    ("the 18 configurations of 'ORW-CFM-W2'", "3 of the 9 configurations of 'ADRPO-FM'")."""
    if len(labels) <= most:
        return ", ".join(repr(label) for label in labels)
    parts = []
    for family, members in points.families.items():
        n = sum(label in labels for label in members)
        if n:
            parts.append(f"the {n} configurations of {family!r}" if n == len(members) else f"{n} of the {len(members)} configurations of {family!r}")
    return ", ".join(parts)


def verdict_markdown(points: Points, analyses: Sequence[PairAnalysis]) -> str:
    """The verdict and hypervolume tables of every pair, the rule and the notes, as markdown."""
    lines = ["## Pareto verdicts", "", RULE, ""]
    if points.base_differences:
        lines += ["The base model's step-0 evaluation differs between runs of a seed (the first run's is the base point):"]
        lines += [f"- {line}" for line in points.base_differences] + [""]
    for analysis in analyses:
        o = analysis.objective
        lines += [f"### {o.title}", ""]
        if analysis.comparisons:
            lines += [f"Front, per seed: {named(analysis.baseline, points)} and the base model.", ""]
            lines += [f"| Configuration | Δ {o.y} at equal {o.x} | in range | verdict | Δ {o.x} at equal {o.y} | in range | verdict | Monitor |",
                      "|---|---|---|---|---|---|---|---|"]
            by_label: dict[str, list[FrontComparison]] = {}
            for record in analysis.comparisons:
                by_label.setdefault(record.label, []).append(record)
            for label, (gain_y, gain_x) in by_label.items():
                cells = _delta_cells(gain_y, points) + _delta_cells(gain_x, points) + [monitor_cell(label, points)]
                lines.append(f"| {label} | " + " | ".join(cells) + " |")
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
    """results.json's "pareto" entry: the rule, the seeds, the notes, the base-model differences, each
    configuration's alarms per seed and every pair's records (each comparison with its shown verdict)."""
    pairs = []
    for analysis in analyses:
        pair = analysis.to_dict()
        for record, shown in zip(pair["comparisons"], analysis.comparisons):
            record["shown_verdict"] = shown_verdict(shown, points)
        pairs.append(pair)
    return {"rule": RULE, "seeds": points.seeds, "notes": points.notes, "base_differences": points.base_differences,
            "alarms": points.alarms, "pairs": pairs}
