"""The experiment engine: one spec for flow and LLM tasks, grids expanded into labelled
configurations of a family, run directories named by slug and configuration hash, finished
runs never trained again (``force`` retrains), and bad specs refused by name."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from adrpo.errors import ConfigError
from adrpo.experiments import engine
from adrpo.experiments.engine import plan, run_experiment, slug
from adrpo.experiments.spec import ExperimentSpec
from adrpo.flow.trainer import FlowTrainer
from conftest import TINY_SETTINGS

TRAINER = {"num_steps": 2, "prompts_per_step": 2, "group_size": 4, "sampling_steps": 2, "learning_rate": 1e-3,
           "checkpoint_steps": 0, "report_to": ["none"], "progress_bar": False}


def digits_spec(tmp_path: Path, cache: Path, **changes) -> ExperimentSpec:
    values = {
        "task": "digits",
        "task_args": {"settings": dict(TINY_SETTINGS), "cache": str(cache), "eval_samples": 2, "eval_sampling_steps": 2},
        "trainer": dict(TRAINER), "eval": {"steps": 2}, "seeds": [0], "output_dir": str(tmp_path / "out"),
        "methods": [{"label": "ADRPO", "method": "adrpo"}, {"label": "ORW", "method": "orw_cfm_w2", "grid": {"orw_alpha": [0.1, 1.0]}}],
        **changes,
    }
    return ExperimentSpec.from_dict(values)


@pytest.fixture
def count_trainings(monkeypatch):
    """The output directories FlowTrainer.train was called for, in order."""
    trained: list[str] = []
    original = FlowTrainer.train

    def counting(self, **kwargs):
        trained.append(self.config.output_dir)
        return original(self, **kwargs)

    monkeypatch.setattr(FlowTrainer, "train", counting)
    return trained


def test_grid_and_points_expand_into_labelled_configurations_of_one_family(tmp_path):
    spec = ExperimentSpec.from_dict({
        "task": "digits", "output_dir": str(tmp_path),
        "methods": [
            {"label": "ADRPO", "method": "adrpo", "grid": {"beta0": [0.3, 1.0], "advantage_scale": ["std", "none"]}},
            {"label": "ORW-CFM-W2", "method": "orw_cfm_w2", "points": [{"orw_alpha": 0.1}, {"orw_alpha": 1.0, "orw_tau": 5.0}]},
            {"label": "RAFT", "method": "raft"},
            {"label": "tuned RAFT", "method": "raft", "family": "RAFT", "role": "baseline", "raft_fraction": 0.5},
        ],
    })
    configurations = spec.configurations()
    assert [c.label for c in configurations] == [
        "ADRPO (beta0=0.3, advantage_scale=std)", "ADRPO (beta0=0.3, advantage_scale=none)",
        "ADRPO (beta0=1, advantage_scale=std)", "ADRPO (beta0=1, advantage_scale=none)",
        "ORW-CFM-W2 (orw_alpha=0.1)", "ORW-CFM-W2 (orw_alpha=1, orw_tau=5)", "RAFT", "tuned RAFT",
    ]
    assert [c.family for c in configurations] == ["ADRPO"] * 4 + ["ORW-CFM-W2"] * 2 + ["RAFT"] * 2
    assert [c.role for c in configurations] == ["adaptive"] * 4 + ["baseline"] * 2 + ["other", "baseline"]
    assert configurations[5].overrides == {"method": "orw_cfm_w2", "orw_alpha": 1.0, "orw_tau": 5.0}
    assert spec.kind == "flow"
    assert ExperimentSpec.from_dict({"task": "arithmetic", "methods": [{"label": "G", "trainer": "grpo"}]}).configurations()[0].role == "baseline"


@pytest.mark.parametrize("changes, piece", [
    ({"task": "chess"}, "task must be one of"),
    ({"methods": []}, "methods is empty"),
    ({"methods": [{"method": "adrpo"}]}, "non-empty 'label'"),
    ({"methods": [{"label": "A", "grid": {"beta0": []}}]}, "grid must map keys to non-empty lists"),
    ({"methods": [{"label": "A", "grid": {"beta0": [1]}, "points": [{"beta0": 2}]}]}, "'grid' or 'points', not both"),
    ({"methods": [{"label": "A", "role": "hero"}]}, "role must be one of"),
    ({"methods": [{"label": "A"}, {"label": "A"}]}, "duplicate labels ['A']"),
    ({"seeds": [0, 0]}, "seeds repeat"),
    ({"workers": 0}, "workers must be an int >= 1"),
    ({"sedes": [1]}, "['sedes']"),
])
def test_bad_specs_are_refused_by_name(tmp_path, changes, piece):
    values = {"task": "digits", "output_dir": str(tmp_path), "methods": [{"label": "A", "method": "adrpo"}], **changes}
    with pytest.raises(ConfigError) as info:
        ExperimentSpec.from_dict(values)
    assert piece in str(info.value)


def test_plan_names_run_directories_by_slug_and_configuration_hash(tmp_path, digits_cache):
    # Two labels that read alike as file names must not share a directory.
    spec = digits_spec(tmp_path, digits_cache, methods=[{"label": "ORW-CFM-W2 (α=1)", "method": "orw_cfm_w2", "orw_alpha": 1.0},
                                                        {"label": "ORW-CFM-W2 (β=1)", "method": "orw_cfm_w2", "orw_alpha": 2.0}])
    first, second = plan(spec)
    assert first.directory != second.directory and first.digest != second.digest
    assert first.directory.parent.name == f"{slug('ORW-CFM-W2 (α=1)')}-{first.digest}" == f"ORW-CFM-W2_α=1-{first.digest}"
    assert first.directory.name == "seed-0"
    # The hash is of the resolved configuration: a default written out changes nothing; a real change does.
    explicit = digits_spec(tmp_path, digits_cache, methods=[{"label": "ORW-CFM-W2 (α=1)", "method": "orw_cfm_w2", "orw_alpha": 1.0,
                                                             "orw_tau": 0.5}])
    assert plan(explicit)[0].digest == first.digest
    other_eval = digits_spec(tmp_path, digits_cache, eval={"steps": 1}, methods=spec.methods[:1])
    assert plan(other_eval)[0].digest != first.digest
    with pytest.raises(ConfigError, match="resolve to the same configuration"):
        plan(digits_spec(tmp_path, digits_cache, methods=[{"label": "A", "method": "adrpo"}, {"label": "B", "method": "adrpo", "beta0": 1.0}]))
    with pytest.raises(ConfigError, match=r"method 'ORW \(orw_alpha=-1\)': orw_alpha must be >= 0"):
        plan(digits_spec(tmp_path, digits_cache, methods=[{"label": "ORW", "method": "orw_cfm_w2", "grid": {"orw_alpha": [-1]}}]))


def test_finished_runs_are_never_trained_again_and_force_retrains(tmp_path, digits_cache, count_trainings):
    spec = digits_spec(tmp_path, digits_cache)
    first = run_experiment(spec)
    assert len(count_trainings) == 3 and [run["label"] for run in first["runs"]] == [
        "ADRPO", "ORW (orw_alpha=0.1)", "ORW (orw_alpha=1)"]
    again = run_experiment(spec)
    assert len(count_trainings) == 3  # nothing trained
    assert again["runs"] == first["runs"]
    # Extending the sweep trains only the new points (here a new seed and a new grid value).
    extended = digits_spec(tmp_path, digits_cache, seeds=[0, 1], methods=[
        {"label": "ADRPO", "method": "adrpo"}, {"label": "ORW", "method": "orw_cfm_w2", "grid": {"orw_alpha": [0.1, 1.0, 10.0]}}])
    results = run_experiment(extended)
    assert len(count_trainings) == 3 + 5  # seed 0: the α = 10 point; seed 1: all four
    assert results["runs"][:3] == first["runs"]
    assert {Path(d).parent.name.split("-")[0] for d in count_trainings[3:]} >= {"ORW_orw_alpha=10"}
    run_experiment(spec, force=True)
    assert len(count_trainings) == 8 + 3


def test_an_incomplete_run_is_resumed_not_restarted(tmp_path, digits_cache, monkeypatch, count_trainings):
    spec = digits_spec(tmp_path, digits_cache, trainer={**TRAINER, "checkpoint_steps": 1}, methods=[{"label": "ADRPO", "method": "adrpo"}])
    (job,) = plan(spec)
    saved = engine.save_result
    monkeypatch.setattr(engine, "save_result", lambda job, result: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):  # killed after training, before the result was written
        run_experiment(spec)
    assert not (job.directory / "result.json").exists() and (job.directory / "checkpoints" / "step-00000002").is_dir()
    monkeypatch.setattr(engine, "save_result", saved)
    steps: list[int] = []
    original_step = FlowTrainer.step
    monkeypatch.setattr(FlowTrainer, "step", lambda self, **kw: steps.append(self.state.step) or original_step(self, **kw))
    (run,) = run_experiment(spec)["runs"]
    assert steps == []  # resumed at its final checkpoint: no step trained again
    assert [point["step"] for point in run["trajectory"]] == [0, 2]
    assert json.loads((job.directory / "result.json").read_text()) == run


def test_a_run_its_monitor_stopped_is_not_trained_past_the_stop_when_the_sweep_resumes(tmp_path, digits_cache, monkeypatch):
    """Under monitor: stop a run ends at its first alarm (step 2 here), with a checkpoint there. Killed before its
    result was written, the sweep run again loads that checkpoint and trains nothing (`fm train --resume` would
    go on to step 4): the result is the one the interrupted sweep was writing."""
    trainer = {**TRAINER, "num_steps": 4, "checkpoint_steps": 0, "monitor": "stop", "monitor_thresholds": {"w2_max": 1e-12}}
    spec = digits_spec(tmp_path, digits_cache, trainer=trainer, methods=[{"label": "ADRPO", "method": "adrpo"}])
    (job,) = plan(spec)
    written = []
    saved = engine.save_result
    monkeypatch.setattr(engine, "save_result", lambda job, result: written.append(result.to_dict()) or (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        run_experiment(spec)
    assert [p.name for p in (job.directory / "checkpoints").iterdir()] == ["step-00000002"]
    assert [alarm["step"] for alarm in written[0]["alarms"]] == [2]
    monkeypatch.setattr(engine, "save_result", saved)
    steps: list[int] = []
    original_step = FlowTrainer.step
    monkeypatch.setattr(FlowTrainer, "step", lambda self, **kw: steps.append(self.state.step) or original_step(self, **kw))
    (run,) = run_experiment(spec)["runs"]
    assert steps == [] and run == written[0]
    assert [p.name for p in (job.directory / "checkpoints").iterdir()] == ["step-00000002"]


def test_sweep_quick_presets_run_end_to_end_on_a_two_point_grid(tmp_path, digits_cache, monkeypatch, capsys):
    """`adrpo sweep` on the quick presets, reduced to two points per family and two seeds on the tiny
    stand-ins: the table, the fronts, the verdicts (one row per ADRPO point and objective pair) and,
    for the flow task, the image grid."""
    from transformers.utils import logging as hf_logging

    from adrpo import cli

    flow = ["sweep", "--preset", "digits-sweep-quick", "--output-dir", str(tmp_path / "flow"), "--workers", "1",
            "--set", f"task_args={json.dumps({'settings': TINY_SETTINGS, 'cache': str(digits_cache), 'eval_samples': 2, 'eval_sampling_steps': 2})}",
            "--set", "trainer.num_steps=2", "--set", "eval.steps=1",
            "--set", "methods=[{label: ADRPO-FM, method: adrpo, points: [{beta0: 1.0}, {beta0: 0.03, advantage_scale: none}]},"
                     " {label: ORW-CFM-W2, method: orw_cfm_w2, grid: {orw_alpha: [0.1, 10.0]}}]"]
    cli.main(flow)
    printed = capsys.readouterr().out
    out = tmp_path / "flow"
    for name in ("table.md", "verdicts.md", "results.json", "fronts.png", "tradeoff.png", "grid.png"):
        assert (out / name).is_file(), name
    verdicts = (out / "verdicts.md").read_text()
    assert "ADRPO-FM (beta0=1)" in verdicts and "ADRPO-FM (beta0=0.03, advantage_scale=none)" in verdicts
    assert verdicts.count("| ADRPO-FM (beta0=1) |") == 2  # one row per objective pair
    results = json.loads((out / "results.json").read_text())
    assert [pair["y"] for pair in results["pareto"]["pairs"]] == ["diversity", "w2"]
    assert {c["verdict"].split(" (")[0] for pair in results["pareto"]["pairs"] for c in pair["comparisons"]} <= {
        "beyond", "on", "behind", "out of range"}
    assert "| ADRPO-FM (beta0=1) |" in printed and len(results["runs"]) == 2 * 4

    monkeypatch.setenv("ADRPO_CACHE", str(tmp_path / "cache"))
    llm = ["sweep", "--preset", "arithmetic-sweep-quick", "--output-dir", str(tmp_path / "llm"), "--workers", "1",
           "--set", "task_args={max_operand: 5, held_out: 5, steps: 20, hidden: 16, layers: 1}",
           "--set", "trainer.max_steps=2", "--set", "trainer.per_device_train_batch_size=8", "--set", "trainer.num_generations=4",
           "--set", "eval={steps: 1, group: 2, prompts: 3}",
           "--set", "methods=[{label: GRPO, trainer: grpo, grid: {beta: [0.0, 0.2]}}, {label: ADRPO-GRPO, trainer: adrpo, beta: 0.04}]"]
    cli.main(llm)
    assert "Loading weights" not in capsys.readouterr().err  # transformers' per-load bar, three per run
    assert hf_logging.is_progress_bar_enabled()  # and on again after the runs
    verdicts = (tmp_path / "llm" / "verdicts.md").read_text()
    assert verdicts.count("| ADRPO-GRPO |") == 4  # per objective pair: its verdict row and its family's hypervolume row
    assert [pair["y"] for pair in json.loads((tmp_path / "llm" / "results.json").read_text())["pareto"]["pairs"]] == ["diversity", "kl"]


def test_identity_holds_only_settings_that_differ_from_the_defaults():
    from adrpo.experiments.backends import non_default_fields
    from adrpo.flow.config import FlowConfig

    # The clip is derived from beta0 (None -> ±beta0); every other field is at its default.
    assert non_default_fields(FlowConfig()) == {"adv_clip_min": -1.0, "adv_clip_max": 1.0}
    assert non_default_fields(FlowConfig(method="raft", raft_fraction=0.5)) == {
        "method": "raft", "raft_fraction": 0.5, "adv_clip_min": -1.0, "adv_clip_max": 1.0}


def test_every_spec_field_is_in_the_identity_or_declared_result_neutral(tmp_path, digits_cache):
    """A spec field added later must be put into a run's identity or declared result-neutral."""
    import dataclasses

    fields = {f.name for f in dataclasses.fields(ExperimentSpec)}
    declared = [*engine.IDENTITY_FIELDS, *engine.RESOLVED_FIELDS, *engine.RESULT_NEUTRAL_FIELDS]
    assert sorted(declared) == sorted(fields) and len(set(declared)) == len(declared)
    # each hashed field changes the digest; each neutral one does not
    spec = digits_spec(tmp_path, digits_cache, methods=[{"label": "ADRPO", "method": "adrpo"}])
    digest = plan(spec)[0].digest
    changed = {"task_args": {**spec.task_args, "eval_samples": 3}, "eval": {"steps": 1}, "trainer": {**TRAINER, "num_steps": 3},
               "methods": [{"label": "ADRPO", "method": "adrpo", "beta0": 0.5}]}
    for name, value in changed.items():
        assert plan(dataclasses.replace(spec, **{name: value}))[0].digest != digest, name
    for name, value in {"seeds": [0, 1], "workers": 2, "output_dir": str(tmp_path / "elsewhere")}.items():
        assert plan(dataclasses.replace(spec, **{name: value}))[0].digest == digest, name


def test_the_monitor_setting_is_part_of_an_llm_runs_identity():
    """Switching the monitor from warn to stop, or moving a threshold, must not reuse runs trained under the
    old setting; the default keeps the hash finished runs had before the monitor was hashed."""
    llm = ExperimentSpec.from_dict({"task": "arithmetic", "methods": [{"label": "GRPO", "trainer": "grpo"}]})
    resolved = {"beta": 0.04}
    warn = engine.config_hash(llm, resolved)
    assert warn == engine.config_hash(ExperimentSpec.from_dict({**llm.__dict__, "monitor": "warn"}), resolved)
    stop = ExperimentSpec.from_dict({**llm.__dict__, "monitor": "stop"})
    moved = ExperimentSpec.from_dict({**llm.__dict__, "monitor": {"policy": "warn", "thresholds": {"kl_max": 1.0}}})
    assert len({warn, engine.config_hash(stop, resolved), engine.config_hash(moved, resolved)}) == 3
    # the hash of a default-monitor run is what it was before (an identity without a monitor key)
    identity = {"task": "arithmetic", "task_args": {}, "eval": {}, "config": resolved}
    assert warn == hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:8]


def test_collapse_monitor_messages_go_through_the_runs_bar(tmp_path, digits_cache, capsys):
    """A run's alarm is written through tqdm (on its own line, prefixed by the run), not into the middle of
    the bar (from worker processes, through a queue: tests/test_sweep_interrupt.py)."""
    trainer = {**TRAINER, "logging_steps": 1, "monitor_thresholds": {"w2_max": 1e-12}}  # every logged W2 alarms
    spec = digits_spec(tmp_path, digits_cache, trainer=trainer)
    run_experiment(spec)
    lines = capsys.readouterr().err.splitlines()
    for label in ("ADRPO", "ORW (orw_alpha=0.1)", "ORW (orw_alpha=1)"):
        (line,) = [line for line in lines if f"{label} seed 0: collapse monitor: w2_bound" in line]
        assert line.startswith(f"{label} seed 0: collapse monitor") or line.split("\r")[-1].startswith(label), line
    assert any(line.startswith("runs: 0 of 3 finished before and loaded") for line in lines)


def test_equal_monitor_settings_hash_alike_and_bad_ones_are_refused_by_name():
    def spec(monitor):
        return ExperimentSpec.from_dict({"task": "arithmetic", "monitor": monitor, "methods": [{"label": "GRPO", "trainer": "grpo"}]})

    assert spec(False).monitor == spec("off").monitor == "off"  # `monitor: off` in YAML is false
    assert spec(True).monitor == spec({"policy": "warn"}).monitor == spec({"thresholds": {}}).monitor == "warn"
    assert spec({"policy": "stop", "thresholds": {"kl_max": 1.0}}).monitor == {"policy": "stop", "thresholds": {"kl_max": 1.0}}
    hashes = {engine.config_hash(spec(m), {}) for m in (False, "off")}
    assert len(hashes) == 1
    for bad, message in (("loud", "monitor must be one of"), ({"polcy": "stop"}, r"unknown monitor key\(s\) \['polcy'\]"),
                         ({"thresholds": 3}, "monitor.thresholds must be a mapping")):
        with pytest.raises(ConfigError, match=message):
            spec(bad)
