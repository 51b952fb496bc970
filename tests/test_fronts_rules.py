"""What enters a front and what the verdict tables say beside it: unfinished runs left out and named,
step-0 evaluations that differ between runs of a seed reported, collapse alarms shown next to every
verdict (a *beyond* whose runs alarmed marked), and moving-reference runs placed on the reward–W2 plane
by their W2 to the base model. Built on test_report's hand-made sweep, whose numbers it derives."""

from __future__ import annotations

import json

import pytest
from test_report import BASE, SEEDS, records, run, sweep_results

from adrpo.experiments.fronts import collect_points, pareto_analysis, verdict_markdown
from adrpo.experiments.report import write_report


def with_target(results: dict, target: int = 10) -> dict:
    """Every run's target step recorded (the hand-made runs end at step 10)."""
    return {**results, "runs": [{**r, "target_step": target} for r in results["runs"]]}


def test_a_run_stopped_short_of_its_target_step_stays_out_of_the_fronts():
    results = with_target(sweep_results())
    short = next(r for r in results["runs"] if r["label"] == "ORW (a=0.1)" and r["seed"] == 1)
    short["target_step"] = 50  # stopped by the monitor at its last evaluation, step 10 of 50
    points, (diversity, _) = pareto_analysis(results, "flow")
    assert "ORW (a=0.1)" not in points.configurations and diversity.baseline == ["ORW (a=1)"]
    assert "unfinished run, left out: 'ORW (a=0.1)' seed 1: last evaluation at step 10 of 50" in points.notes
    # without ORW (a=0.1) the front ends at the ORW (a=1) point (0.6, 2.0): ADRPO (beta0=1) at reward 0.7 is out of range
    assert records(diversity)["ADRPO (beta0=1)", "diversity"].verdict == "out of range"
    # finished (its last evaluation at the target step) it is in, as in test_report
    assert "ORW (a=0.1)" in collect_points(with_target(sweep_results())).configurations


def test_report_table_names_unfinished_runs(tmp_path):
    results = with_target(sweep_results())
    results["runs"][0]["target_step"] = 20
    table = write_report(results, tmp_path)["table"].read_text()
    assert "- unfinished: 'ORW (a=1)' seed 0: last evaluation at step 10 of 20" in table


def test_differing_step_zero_evaluations_are_reported_per_seed(tmp_path):
    results = sweep_results()
    other = next(r for r in results["runs"] if r["label"] == "ADRPO (beta0=1)" and r["seed"] == 2)
    other["trajectory"][0] = {"step": 0, **BASE, "reward": 0.55}  # e.g. another guidance_scale in the evaluation
    points = collect_points(results)
    assert points.base_differences == [
        "seed 2: 'ADRPO (beta0=1)' starts from another step-0 evaluation than 'ORW (a=1)' (reward 0.5 vs 0.55)"
    ]
    assert points.base[2]["reward"] == 0.5  # the first run's stays the base point
    paths = write_report(results, tmp_path)
    assert "- base model: seed 2: 'ADRPO (beta0=1)' starts from another" in paths["table"].read_text()
    assert "differs between runs of a seed" in paths["verdicts"].read_text()
    assert json.loads(paths["json"].read_text())["pareto"]["base_differences"] == points.base_differences
    # equal up to rounding (relative 1e-6) is the same base model
    other["trajectory"][0] = {"step": 0, **BASE, "reward": 0.5 * (1 + 1e-9)}
    assert collect_points(results).base_differences == []


def test_alarms_are_shown_beside_each_verdict_and_mark_an_alarmed_beyond(tmp_path):
    results = sweep_results()
    for r in results["runs"]:
        if r["label"] == "ADRPO (beta0=1)" and r["seed"] in (0, 2):
            r["alarms"] = [{"rule": "diversity_collapse", "step": 10}]
        if r["label"] == "ADRPO (beta0=0.1)":
            r["alarms"] = None  # monitor off
    points, analyses = pareto_analysis(results, "flow")
    assert points.alarms["ADRPO (beta0=1)"] == {0: ["diversity_collapse"], 1: [], 2: ["diversity_collapse"]}
    text = verdict_markdown(points, analyses)
    # test_report's numbers: beyond on both coordinates of the diversity pair, now marked
    assert ("| ADRPO (beta0=1) | 0.5 ± 0.1 | 3/3 | beyond (alarmed) | 0.1 ± 0.02 | 3/3 | beyond (alarmed) | "
            "diversity_collapse (seeds 0, 2) |") in text
    assert "| ADRPO (beta0=0.1) | -0.3 ± 0.05 | 3/3 | behind |" in text and text.count(" | off |") == 2  # no record: "off"
    assert "| ADRPO (beta0=10) | — | 0/3 | out of range | — | 0/3 | out of range | — |" in text  # alarms: none
    pareto = json.loads(write_report(results, tmp_path)["json"].read_text())["pareto"]
    first = pareto["pairs"][0]["comparisons"][0]
    assert (first["verdict"], first["shown_verdict"]) == ("beyond", "beyond (alarmed)")
    assert pareto["alarms"]["ADRPO (beta0=1)"] == {"0": ["diversity_collapse"], "1": [], "2": ["diversity_collapse"]}


def test_moving_reference_runs_with_w2_base_are_placed_by_it():
    results = sweep_results()
    for seed in SEEDS:
        results["runs"].append(run("ADRPO moving", "ADRPO moving", "adaptive", seed,
                                   {"reward": 0.7, "diversity": 1.9, "w2": 0.001, "w2_base": 0.15}, config={"sync_ref_model": True}))
    points, (_, divergence) = pareto_analysis(results, "flow")
    assert "ADRPO moving" in divergence.labels and divergence.placed_by_base == ["ADRPO moving"]
    assert divergence.values["ADRPO moving"][0]["w2"] == 0.15 and points.configurations["ADRPO moving"][0]["w2"] == 0.001
    # the front's w2 at reward 0.7 is 0.2 (test_report): Δw2 = 0.2 − 0.15 = 0.05 on every seed, SE 0: beyond
    moving = records(divergence)["ADRPO moving", "w2"]
    assert moving.delta_mean == pytest.approx(0.05) and moving.verdict == "beyond"
    assert any("placed by their w2 to the base model" in note for note in divergence.notes)


def test_a_flow_table_with_a_moving_reference_run_gains_a_w2_to_base_column(tmp_path):
    results = sweep_results()
    assert "W2 to base" not in write_report(results, tmp_path / "fixed")["table"].read_text()  # no moving reference: no column
    for seed in SEEDS:
        results["runs"].append(run("ADRPO moving", "ADRPO moving", "adaptive", seed,
                                   {"reward": 0.7, "diversity": 1.9, "w2": 0.001, "w2_base": 0.15}, config={"sync_ref_model": True}))
    lines = write_report(results, tmp_path / "moving")["table"].read_text().splitlines()
    assert lines[0] == "| Method | Reward ↑ | Diversity ↑ | W2 to ref. ↓ | W2 to base ↓ | First alarm |"
    table = lines[:lines.index("")]  # the Table 1 layout, before the notes and verdicts
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in table[2:]}
    assert [cell.strip("*") for cell in rows["ADRPO moving"][3:5]] == ["0.001 ± 0.000", "0.150 ± 0.000"]  # to its moving reference, to the base
    assert [cell.strip("*") for cell in rows["ORW (a=1)"][3:5]] == ["0.100 ± 0.000", "0.100 ± 0.000"]  # a fixed reference is the base
