"""What enters a front is a finished run (issue 16, section 4): every result records the step its run was to end
at (a result without one cannot be built), a result cached before target steps were recorded gets its
config's or is trained again, and a flow run stopped early by the collapse monitor's ``stop`` policy is left
out of the fronts with a line naming it. The LLM backend's ``target_step`` is checked on a real run in
tests/test_llm_sweep_resume.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adrpo.experiments.engine import RESULT_FILE, RunResult, load_complete, plan, run_experiment
from adrpo.experiments.fronts import collect_points, is_finished, unfinished_runs
from adrpo.experiments.report import write_report
from adrpo.experiments.spec import ExperimentSpec
from conftest import TINY_SETTINGS

TRAINER = {"num_steps": 4, "prompts_per_step": 2, "group_size": 4, "sampling_steps": 2, "learning_rate": 1e-3,
           "checkpoint_steps": 0, "logging_steps": 1, "report_to": ["none"], "progress_bar": False}
RESULT = dict(label="A", family="A", role="adaptive", seed=0, config_hash="0" * 8, directory="", config={},
              trajectory=[{"step": 0, "reward": 0.1}, {"step": 4, "reward": 0.2}])


def test_a_result_without_its_target_step_cannot_be_built():
    with pytest.raises(TypeError, match="target_step"):
        RunResult(**RESULT)  # a backend that forgets it fails here, before any result is saved
    with pytest.raises(ValueError, match=r"'A' seed 0: target_step must be the step the run was to end at .* got None"):
        RunResult(**RESULT, target_step=None)
    assert RunResult.from_dict(RunResult(**RESULT, target_step=4).to_dict()).target_step == 4


def test_a_hand_made_run_without_a_target_step_is_not_counted_finished():
    run = {**RESULT, "target_step": None}
    assert not is_finished(run) and is_finished({**run, "target_step": 4})
    assert unfinished_runs({"runs": [run]}) == ["'A' seed 0: last evaluation at step 4, no target step recorded"]


def llm_spec(tmp_path: Path, **trainer) -> ExperimentSpec:
    return ExperimentSpec.from_dict({"task": "arithmetic", "trainer": trainer, "seeds": [0], "output_dir": str(tmp_path / "llm"),
                                     "methods": [{"label": "GRPO", "trainer": "grpo"}]})


def write_old_result(directory: Path, digest: str, config: dict) -> None:
    """A result.json as saved before target steps were recorded."""
    directory.mkdir(parents=True)
    values = RunResult(**{**RESULT, "config_hash": digest, "config": config}, target_step=0).to_dict()
    del values["target_step"]
    (directory / RESULT_FILE).write_text(json.dumps(values))


def test_a_cached_result_without_a_target_step_takes_its_configs_or_is_trained_again(tmp_path, digits_cache, capsys):
    flow = digits_spec(tmp_path, digits_cache, [{"label": "A", "method": "adrpo"}])
    (job,) = plan(flow)
    write_old_result(job.directory, job.digest, {"num_steps": 4})
    assert load_complete(flow, job).target_step == 4
    for trainer, config, expected in (({"max_steps": 6}, {"max_steps": 6}, 6), ({}, {"max_steps": -1}, None)):  # -1: epochs decide
        spec = llm_spec(tmp_path / str(expected), **trainer)
        (job,) = plan(spec)
        write_old_result(job.directory, job.digest, config)
        loaded = load_complete(spec, job)
        assert (None if loaded is None else loaded.target_step) == expected
    assert "'GRPO' seed 0: its saved result records no target step and its config gives none (max_steps unset): training it again" \
        in capsys.readouterr().err


def digits_spec(tmp_path: Path, cache: Path, methods: list[dict]) -> ExperimentSpec:
    return ExperimentSpec.from_dict({
        "task": "digits",
        "task_args": {"settings": dict(TINY_SETTINGS), "cache": str(cache), "eval_samples": 2, "eval_sampling_steps": 2},
        "trainer": dict(TRAINER), "eval": {"steps": 1}, "seeds": [0], "output_dir": str(tmp_path / "out"), "methods": methods,
    })


def test_a_flow_run_stopped_by_the_monitor_is_left_out_of_the_fronts_and_named(tmp_path, digits_cache):
    stopped = {"label": "ADRPO stopped", "method": "adrpo", "monitor": "stop", "monitor_thresholds": {"w2_max": 1e-12}}
    spec = digits_spec(tmp_path, digits_cache, [{"label": "ADRPO", "method": "adrpo"}, stopped,
                                                {"label": "ORW", "method": "orw_cfm_w2"}])
    results = run_experiment(spec)
    assert [(run["target_step"], run["config"]["num_steps"]) for run in results["runs"]] == [(4, 4)] * 3  # the flow backend records it
    finished, short, baseline = results["runs"]
    assert [point["step"] for point in short["trajectory"]] == [0, 1]  # the alarm at step 1's row stopped it there
    assert [point["step"] for point in finished["trajectory"]] == [point["step"] for point in baseline["trajectory"]] == [0, 1, 2, 3, 4]
    assert [alarm["rule"] for alarm in short["alarms"]] == ["w2_bound"]

    points = collect_points(results)
    assert set(points.configurations) == {"ADRPO", "ORW"}
    line = "'ADRPO stopped' seed 0: last evaluation at step 1 of 4"
    assert f"unfinished run, left out: {line}" in points.notes
    paths = write_report(results, tmp_path / "out")
    assert f"- unfinished: {line}" in paths["table"].read_text()
    verdicts = paths["verdicts"].read_text()
    assert f"- unfinished run, left out: {line}" in verdicts and "| ADRPO stopped |" not in verdicts
    assert "| ADRPO |" in verdicts
