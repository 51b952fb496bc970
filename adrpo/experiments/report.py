"""Tables, JSON and plots of a comparison: the paper's Table 1 layout, Figure 3 and Figure 4 analogs,
for the audio QA task its Table 2 and Table 3 layouts (accuracy per category), and, through
:mod:`adrpo.experiments.fronts` and :mod:`adrpo.experiments.grids`, the Pareto fronts and verdicts and
the Figure 2 analog (image grid) of a sweep."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from adrpo.experiments.front_plots import LABELLED_POINTS, legend_once, plot_fronts, plot_styles
from adrpo.experiments.fronts import (
    BASE_LABEL,
    base_differences,
    has_both_roles,
    pareto_analysis,
    pareto_json,
    unfinished_runs,
    verdict_markdown,
)
from adrpo.experiments.grids import write_grid
from adrpo.experiments.spec import TASK_KINDS

# (key, column title, higher is better; None: no better direction, not ranked)
Metric = tuple[str, str, "bool | None"]
METRICS: tuple[Metric, ...] = (("reward", "Reward ↑", True), ("diversity", "Diversity ↑", True), ("w2", "W2 to ref. ↓", False))
W2_BASE: Metric = ("w2_base", "W2 to base ↓", False)
"""A column of flow tables with a moving-reference run: its W2 to the base model (``w2_base``); a fixed-reference
run's W2 is to the base already, so its ``w2`` fills the cell."""
FALLBACK = {"w2_base": "w2"}
LLM_METRICS: tuple[Metric, ...] = (
    ("reward", "Accuracy ↑", True), ("kl", "KL to base ↓", False), ("entropy", "Entropy", None), ("diversity", "Distinct ↑", True),
)


def flow_metrics(results: dict[str, Any]) -> tuple[Metric, ...]:
    """The flow table's columns: :data:`METRICS`, and :data:`W2_BASE` when a run's evaluations log ``w2_base``."""
    moving = any("w2_base" in row for run in results["runs"] for row in run.get("trajectory") or [])
    return (*METRICS, W2_BASE) if moving else METRICS


def _value(row: dict[str, Any], key: str) -> float:
    return row[key] if key in row or key not in FALLBACK else row[FALLBACK[key]]


def final_metrics(results: dict[str, Any], metrics: Sequence[Metric] = METRICS) -> dict[str, dict[str, list[float]]]:
    """{label: {metric: [value per seed]}} at the last evaluation; the base row is step 0. A metric a row lacks
    is read from its :data:`FALLBACK` (``w2_base`` from ``w2`` for a run whose reference did not move)."""
    table: dict[str, dict[str, list[float]]] = {BASE_LABEL: {key: [] for key, _, _ in metrics}}
    base_seeds: set[int] = set()
    for run in results["runs"]:
        first, last = run["trajectory"][0], run["trajectory"][-1]
        if first["step"] == 0 and run["seed"] not in base_seeds:
            base_seeds.add(run["seed"])
            for key, _, _ in metrics:
                table[BASE_LABEL][key].append(_value(first, key))
        row = table.setdefault(run["label"], {key: [] for key, _, _ in metrics})
        for key, _, _ in metrics:
            row[key].append(_value(last, key))
    return table


def first_alarms(results: dict[str, Any]) -> dict[str, list[int | None] | None]:
    """{label: [step of each seed's first collapse-monitor alarm, None where none]}, seeds in run
    order; a label maps to None when its runs carry no alarm record (monitor off, older results)."""
    steps: dict[str, list[int | None] | None] = {}
    for run in results["runs"]:
        alarms = run.get("alarms")
        if alarms is None:
            steps.setdefault(run["label"], None)
            continue
        row = steps.get(run["label"]) or []
        row.append(min((alarm["step"] for alarm in alarms), default=None))
        steps[run["label"]] = row
    return steps


def alarm_cell(steps: list[int | None] | None) -> str:
    """An em dash when no seed raised an alarm, else each seed's first-alarm step, e.g. ``40, —, 55``."""
    if steps is None:
        return "off"
    if all(step is None for step in steps):
        return "—"
    return ", ".join("—" if step is None else str(step) for step in steps)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample std (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def markdown_table(
    table: dict[str, dict[str, list[float]]], *, metrics: Sequence[Metric] = METRICS, digits: int = 3,
    alarms: dict[str, list[int | None] | None] | None = None,
) -> str:
    """Table 1 layout: one row per method, mean ± std over seeds; best in bold, second in italics.

    With ``alarms`` (:func:`first_alarms`) a last column gives each seed's first collapse alarm.
    """
    labels = list(table)
    ranked: dict[str, dict[str, int]] = {key: {} for key, _, _ in metrics}
    for key, _, higher in metrics:
        if higher is None:
            continue
        trained = [label for label in labels if label != BASE_LABEL]
        order = sorted(trained, key=lambda label: mean_std(table[label][key])[0], reverse=higher)
        ranked[key] = {label: rank for rank, label in enumerate(order)}
    titles = [title for _, title, _ in metrics] + (["First alarm"] if alarms is not None else [])
    lines = ["| Method | " + " | ".join(titles) + " |", "|---" * (len(titles) + 1) + "|"]
    for label in labels:
        cells = []
        for key, _, _ in metrics:
            mean, std = mean_std(table[label][key])
            cell = f"{mean:.{digits}f} ± {std:.{digits}f}"
            rank = ranked[key].get(label)
            cells.append(f"**{cell}**" if rank == 0 else f"*{cell}*" if rank == 1 else cell)
        if alarms is not None:
            cells.append("" if label == BASE_LABEL else alarm_cell(alarms.get(label)))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    seeds = len(next(iter(table.values()))["reward"])
    lines.append("")
    lines.append(f"Mean ± sample std over {seeds} seeds on held-out prompts; best trained method in bold, second in italics.")
    if alarms is not None:
        lines.append("First alarm: the step of each seed's first collapse-monitor alarm (alarms.jsonl in the run directory), "
                     "— where none was raised.")
    return "\n".join(lines)


CATEGORY_METRICS: tuple[Metric, ...] = tuple((f"acc/{key}", key, True) for key in ("sound", "music", "speech", "total"))


def category_tables(results: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    """The Table 2 analog (accuracy per category and in total, every method and the base model) and the Table 3
    analog (the adaptive configurations, e.g. ADRPO's clip ranges, with the base model) as markdown, and both as
    {label: {category: {"mean", "std"}}} for the JSON. Values are percent at the last evaluation, mean ± sample
    std over seeds."""
    from adrpo.data.mmau import accuracy_table

    table = final_metrics(results, CATEGORY_METRICS)
    summary = {label: {key.removeprefix("acc/"): mean_std(values) for key, values in row.items()} for label, row in table.items()}
    adaptive = {run["label"] for run in results["runs"] if run["role"] == "adaptive"}
    ablation = {label: row for label, row in summary.items() if label == BASE_LABEL or label in adaptive}
    seeds = len(table[BASE_LABEL]["acc/total"])
    note = (f"\n\nAccuracy (%) on the held-out split at the last evaluation, mean ± sample std over {seeds} seeds; "
            "Total is over all items.")
    as_json = {label: {key: dict(zip(("mean", "std"), value)) for key, value in row.items()} for label, row in summary.items()}
    return accuracy_table(summary) + note, accuracy_table(ablation) + note, as_json


def plot_tradeoff(results: dict[str, Any], path: Path, *, seed: int | None = None) -> Path:
    """Figure 3 analog: reward–diversity trajectories of one seed, then final reward, diversity, W2. With more than
    :data:`LABELLED_POINTS` configurations, the trajectories alone, one colour per family (the bars would be
    unreadable; table.md and fronts.png give each configuration)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = results["runs"]
    seed = runs[0]["seed"] if seed is None else seed
    table = final_metrics(results)
    labels = list(table)
    by_family = len(labels) - 1 > LABELLED_POINTS
    key_of = (lambda run: run["family"]) if by_family else (lambda run: run["label"])
    styles = plot_styles(list(dict.fromkeys(key_of(run) for run in runs)))
    fig, axes = plt.subplots(1, 1 if by_family else 4, figsize=(9, 5.4) if by_family else (20, 4.8), squeeze=False,
                             gridspec_kw=None if by_family else {"width_ratios": [2.2, 1, 1, 1]})
    ax = axes[0][0]
    for run in (r for r in runs if r["seed"] == seed):
        xs = [point["diversity"] for point in run["trajectory"]]
        ys = [point["reward"] for point in run["trajectory"]]
        color, marker = styles[key_of(run)]
        n = len(xs)
        ax.plot(xs, ys, color=color, alpha=0.35, linewidth=1)
        for i, (x, y) in enumerate(zip(xs, ys)):
            ax.scatter(x, y, color=color, marker=marker, alpha=0.15 + 0.85 * (i + 1) / n, s=18, linewidths=0)
        ax.scatter(xs[-1], ys[-1], color=color, marker=marker, s=160, edgecolors="black", linewidths=0.8, label=key_of(run))
    base = table[BASE_LABEL]
    ax.scatter(base["diversity"][0], base["reward"][0], color="black", marker="o", s=60, label=BASE_LABEL)
    ax.set_xlabel("diversity (mean pairwise embedding distance) →")
    ax.set_ylabel("reward (held-out prompts) →")
    coloured = f"; {len(labels) - 1} configurations, one colour per family" if by_family else ""
    ax.set_title(f"Trajectories through training (seed {seed}); large outlined = final{coloured}", fontsize=10)
    legend_once(ax)
    colors = {label: color for label, (color, _) in styles.items()} | {BASE_LABEL: (0.0, 0.0, 0.0, 1.0)}
    for ax, (key, title, _) in zip(axes[0][1:], METRICS):
        means = [mean_std(table[label][key])[0] for label in labels]
        stds = [mean_std(table[label][key])[1] for label in labels]
        ax.bar(range(len(labels)), means, yerr=stds, color=[colors[label] for label in labels], capsize=3)
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=8)
        ax.set_title(f"final {title}")
        finite = [m for m in means if math.isfinite(m)]
        if key == "w2":
            ax.set_yscale("symlog", linthresh=1e-2)
        elif finite:
            low = min(m - s for m, s in zip(means, stds))
            ax.set_ylim(bottom=max(0.0, low - 0.1 * abs(low)))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_trajectories(results: dict[str, Any], path: Path, *, keys: Sequence[str] = ("reward", "entropy")) -> Path:
    """Figure 4 analog: each metric against training step, mean over seeds with a ±std band. With more than
    :data:`LABELLED_POINTS` configurations, one colour and legend entry per family and no bands (table.md
    gives each configuration)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(dict.fromkeys(run["label"] for run in results["runs"]))
    family = {run["label"]: run["family"] for run in results["runs"]}
    by_family = len(labels) > LABELLED_POINTS
    styles = plot_styles(list(dict.fromkeys(family.values())) if by_family else labels)
    fig, axes = plt.subplots(1, len(keys), figsize=(6.5 * len(keys), 4.5))
    for ax, key in zip(axes, keys):
        for label in labels:
            runs = [run["trajectory"] for run in results["runs"] if run["label"] == label]
            steps = [point["step"] for point in runs[0]]
            series = [[run[j][key] for run in runs] for j in range(len(steps))]
            means = [statistics.fmean(values) for values in series]
            stds = [statistics.stdev(values) if len(values) > 1 else 0.0 for values in series]
            color, marker = styles[family[label] if by_family else label]
            ax.plot(steps, means, color=color, label=family[label] if by_family else label, marker=marker, markersize=4,
                    alpha=0.6 if by_family else 1.0)
            if not by_family:
                ax.fill_between(steps, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)], color=color, alpha=0.15)
        ax.set_xlabel("training step")
        ax.set_ylabel(f"{key} (held-out prompts)")
        per = f"mean over seeds, one line per configuration ({len(labels)}), one colour per family" if by_family else "mean ± std over seeds"
        ax.set_title(f"{key} through training\n({per})", fontsize=10)
    legend_once(axes[0])
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run_notes(results: dict[str, Any]) -> str:
    """Markdown lines under the table: runs that stopped short of their target step (their row is their last
    evaluation, not a final one) and seeds whose runs' step-0 evaluations differ (the Base row is each seed's first run's)."""
    lines = [f"- unfinished: {line}" for line in unfinished_runs(results)]
    lines += [f"- base model: {line}" for line in base_differences(results)]
    return "\n" + "\n".join(lines) + "\n" if lines else ""


def write_report(results: dict[str, Any], output_dir: Path) -> dict[str, Path]:
    """Write a comparison's report into ``output_dir``; returns the paths written, by name.

    - ``table``: table.md, the Table 1 layout (with a First alarm column); with an adaptive and
      a baseline configuration it ends with the Pareto verdict and hypervolume tables;
    - ``json``: results.json, the results plus "summary" (mean and std per method and metric),
      "pareto" (:func:`adrpo.experiments.fronts.pareto_json`, or the reason it was skipped)
      and, for flow tasks with samples, "grid" (its seed, rows, prompts and notes);
    - ``plot``: tradeoff.png (flow tasks) or trajectories.png (LLM tasks);
    - ``fronts`` and ``verdicts``: fronts.png and verdicts.md, with an adaptive and a baseline
      configuration;
    - ``grid``: grid.png, the first seed's samples (flow tasks whose runs saved samples);
    - ``table2`` and ``table3``: table2.md and table3.md (audio QA: :func:`category_tables`, also appended to
      table.md and in results.json under "categories").
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    kind = TASK_KINDS[results["spec"]["task"]]
    llm = kind == "llm"
    metrics = LLM_METRICS if llm else flow_metrics(results)
    table = final_metrics(results, metrics)
    paths = {"table": output_dir / "table.md", "json": output_dir / "results.json",
             "plot": output_dir / ("trajectories.png" if llm else "tradeoff.png")}
    summary = {label: {key: dict(zip(("mean", "std"), mean_std(values))) for key, values in row.items()} for label, row in table.items()}
    extra: dict[str, Any] = {"summary": summary}
    text = markdown_table(table, metrics=metrics, alarms=first_alarms(results)) + "\n" + run_notes(results)
    if llm:
        plot_trajectories(results, paths["plot"])
    else:
        plot_tradeoff(results, paths["plot"])
    if has_both_roles(results):
        points, analyses = pareto_analysis(results, kind)
        verdicts = verdict_markdown(points, analyses)
        paths["verdicts"] = output_dir / "verdicts.md"
        paths["verdicts"].write_text(verdicts)
        text += "\n" + verdicts
        extra["pareto"] = pareto_json(points, analyses)
        if any(analysis.labels for analysis in analyses):
            paths["fronts"] = plot_fronts(points, analyses, output_dir / "fronts.png")
    else:
        extra["pareto"] = {"skipped": "needs at least one adaptive and one baseline configuration"}
    if results["spec"]["task"] == "audio_qa":
        table2, table3, extra["categories"] = category_tables(results)
        paths["table2"], paths["table3"] = output_dir / "table2.md", output_dir / "table3.md"
        paths["table2"].write_text(table2 + "\n")
        paths["table3"].write_text(table3 + "\n")
        text += f"\n## Accuracy per category (Table 2 layout)\n\n{table2}\n\n## Clip-range ablation (Table 3 layout)\n\n{table3}\n"
    if not llm:
        grid = write_grid(results, output_dir / "grid.png")
        if grid is not None:
            paths["grid"] = output_dir / "grid.png"
            extra["grid"] = grid
    paths["table"].write_text(text)
    paths["json"].write_text(json.dumps({**results, **extra}, indent=1))
    return paths
