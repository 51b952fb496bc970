"""An LLM sweep interrupted right after a run's checkpoint and run again (issue 16, section 7): the finished run is
loaded, the interrupted one resumes from its checkpoint (no step trained twice), and every result equals an
uninterrupted sweep's: held-out trajectory, training rows, collapse alarms, target step. The interruption is
in-process, a KeyboardInterrupt raised once a checkpoint is saved: ``checkpoint-4`` (mid-run), ``checkpoint-6`` (the
last step, before the result is written) or, under the monitor's ``stop`` policy, the checkpoint of the step whose
alarm ended the run; what a ``kill -9`` then leaves (the checkpoint's exactness itself is tests/test_llm_resume.py's).
The arithmetic miniature at the quick test settings, a few seconds a case."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from trl import GRPOTrainer

from adrpo.experiments import engine
from adrpo.experiments.engine import RESULT_FILE, run_experiment
from adrpo.experiments.llm_resume import monitor_rows
from adrpo.experiments.spec import ExperimentSpec
from adrpo.llm.trainer import ADRPOTrainer

STEPS, EVERY = 6, 2  # checkpoints after steps 2, 4 and 6 (the evaluation interval)
# every held-out KL after step 0 is above this bound: kl_bound fires at step 2's evaluation, before the checkpoint, and
# a resumed monitor that forgot that evaluation would raise it again (at step 6, or on the training KL's streak)
THRESHOLDS = {"kl_max": 1e-9}


def sweep(tmp_path: Path, name: str, policy: str) -> ExperimentSpec:
    return ExperimentSpec.from_dict({
        "task": "arithmetic", "task_args": {"max_operand": 5, "held_out": 5, "steps": 150, "hidden": 16, "layers": 1},  # rewards that vary
        "trainer": {"max_steps": STEPS, "per_device_train_batch_size": 8, "num_generations": 4, "max_completion_length": 4,
                    "learning_rate": 1e-2, "disable_tqdm": True},
        "eval": {"steps": EVERY, "group": 2, "prompts": 3}, "seeds": [0], "output_dir": str(tmp_path / name),
        "monitor": {"policy": policy, "thresholds": THRESHOLDS},
        "methods": [{"label": "GRPO", "trainer": "grpo", "beta": 0.04}, {"label": "ADRPO-GRPO", "trainer": "adrpo", "beta": 0.04}],
    })


def comparable(run: dict) -> dict:
    """A run's result without where it was written."""
    config = {k: v for k, v in run["config"].items() if not k.endswith("_dir")}
    return {**run, "directory": None, "config": config}


@pytest.mark.timeout(600)
@pytest.mark.parametrize("policy, stop_at", [("warn", 4), ("warn", STEPS), ("stop", 2)])
def test_an_interrupted_llm_sweep_resumes_its_run_from_the_checkpoint_and_ends_as_one_never_interrupted(tmp_path, monkeypatch,
                                                                                                      policy, stop_at):
    straight = run_experiment(sweep(tmp_path, "straight", policy))["runs"]
    end = STEPS if policy == "warn" else 2  # under stop, the alarm at step 2's evaluation ends the run there
    assert [run["target_step"] for run in straight] == [STEPS, STEPS]  # the LLM backend records max_steps
    assert [point["step"] for point in straight[1]["trajectory"]] == list(range(0, end + 1, EVERY))
    assert [(alarm["rule"], alarm["metric"], alarm["step"]) for alarm in straight[1]["alarms"]] == [("kl_bound", "eval/kl", 2)]

    save = ADRPOTrainer._save_checkpoint

    def save_then_interrupt(self, model, trial):
        save(self, model, trial)
        if self.state.global_step == stop_at:
            raise KeyboardInterrupt

    monkeypatch.setattr(ADRPOTrainer, "_save_checkpoint", save_then_interrupt)
    spec = sweep(tmp_path, "interrupted", policy)
    with pytest.raises(engine.Interrupted):
        run_experiment(spec)
    grpo, adrpo = (job.directory for job in engine.plan(spec))
    finished_at = (grpo / RESULT_FILE).stat().st_mtime_ns
    assert not list(grpo.glob("checkpoint-*"))  # a finished run keeps none
    assert not (adrpo / RESULT_FILE).exists() and [p.name for p in adrpo.glob("checkpoint-*")] == [f"checkpoint-{stop_at}"]
    monkeypatch.setattr(ADRPOTrainer, "_save_checkpoint", save)

    trained: list[tuple[str, int]] = []  # (run directory, step) of every optimizer step of the second call
    step = GRPOTrainer.training_step
    monkeypatch.setattr(GRPOTrainer, "training_step",
                        lambda self, *a, **kw: trained.append((self.args.output_dir, self.state.global_step + 1)) or step(self, *a, **kw))
    resumed = run_experiment(spec)["runs"]
    assert (grpo / RESULT_FILE).stat().st_mtime_ns == finished_at  # loaded, not trained again
    assert trained == [(str(adrpo), s) for s in range(stop_at + 1, end + 1)]  # the steps after the checkpoint only
    assert [comparable(run) for run in resumed] == [comparable(run) for run in straight]
    assert not list(adrpo.glob("checkpoint-*"))
    assert json.loads((adrpo / RESULT_FILE).read_text()) == resumed[1]


def test_the_monitor_replay_feeds_each_steps_evaluation_before_its_logged_row():
    trajectory = [{"step": 0, "reward": 0.1}, {"step": 2, "reward": 0.3}]
    logged = [{"reward": 0.2, "step": 1}, {"reward": 0.4, "step": 2}, {"train_runtime": 1.0}]
    assert monitor_rows(trajectory, logged) == [
        {"step": 0, "eval/reward": 0.1}, {"reward": 0.2, "step": 1}, {"step": 2, "eval/reward": 0.3}, {"reward": 0.4, "step": 2}]
