"""The arithmetic miniature's held-out evaluation leaves training alone: GRPO runs built by
the experiment engine's LLM backend log the same rewards and losses and end on the same weights whether the
policy is evaluated every step, every 2 steps or never; and the evaluation is a function of
(policy, seed) only, with the global random state the same after it as before."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from adrpo.experiments.backends import backend_for
from adrpo.experiments.engine import plan
from adrpo.experiments.spec import ExperimentSpec
from adrpo.tasks import arithmetic
from adrpo.tasks.arithmetic import ArithmeticSettings, base_model_path, evaluate_policy, split_rows

# Pretrains in a fraction of a second to ~10% accuracy, so that some groups have a reward spread
# and the policy moves; 25 prompts, 5 held out.
TASK = dict(max_operand=5, held_out=5, hidden=16, layers=1, steps=40, batch_size=16, lr=1e-2)
TRAINER = dict(max_steps=4, learning_rate=1e-2, per_device_train_batch_size=8, num_generations=4, max_completion_length=3,
               temperature=1.0, disable_tqdm=True)
# Keys of TRL's log rows that measure time, not the trajectory.
TIMING = ("runtime", "per_second", "time")


def run(tmp_path, monkeypatch, eval_steps: int | None) -> tuple[list[dict], dict[str, torch.Tensor]]:
    """(TRL's log_history without timings, final weights) of one 4-step GRPO run through the LLM backend;
    ``eval_steps=None`` swaps the held-out evaluation for a callback that does nothing."""
    from adrpo.llm import audio

    trainers = []

    class Recorded(audio.AudioGRPOTrainer):
        def train(self, *args, **kwargs):
            trainers.append(self)
            return super().train(*args, **kwargs)

    class NoEvaluation(TrainerCallback):
        trajectory: list[dict] = []

    spec = ExperimentSpec(
        task="arithmetic", methods=[{"label": "GRPO", "trainer": "grpo", "beta": 0.0}], task_args=TASK, trainer=TRAINER,
        eval={"steps": eval_steps or 1, "group": 2, "prompts": 4}, seeds=[0], output_dir=str(tmp_path / f"runs-{eval_steps}"),
        monitor="off",
    )
    with monkeypatch.context() as patch:
        patch.setattr(audio, "AudioGRPOTrainer", Recorded)
        if eval_steps is None:
            patch.setattr(arithmetic, "evaluation_callback", lambda *args, **kwargs: NoEvaluation())
        (job,) = plan(spec)
        job.directory.mkdir(parents=True)
        result = backend_for(spec).run(spec, job, threads=None)
    assert len(result.trajectory) == {None: 0, 1: 5, 2: 3}[eval_steps]  # step 0, every eval_steps (the end included)
    (trainer,) = trainers
    log = [{k: v for k, v in row.items() if not any(word in k for word in TIMING)} for row in trainer.state.log_history]
    weights = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    return log, weights


def test_evaluation_does_not_change_the_training_trajectory(tmp_path, monkeypatch):
    log, weights = run(tmp_path, monkeypatch, None)
    assert [row["step"] for row in log if "reward" in row] == [1, 2, 3, 4]
    assert {"loss", "reward", "reward_std"} <= set(log[0])
    assert any(row.get("grad_norm", 0) > 0 for row in log)  # the policy moved, so equal weights mean something
    for eval_steps in (1, 2):
        other_log, other_weights = run(tmp_path, monkeypatch, eval_steps)
        assert other_log == log, f"eval every {eval_steps} steps"
        assert other_weights.keys() == weights.keys()
        assert all(torch.equal(other_weights[name], weights[name]) for name in weights), f"eval every {eval_steps} steps"


@pytest.fixture
def policy():
    settings = ArithmeticSettings(**TASK)
    path = base_model_path(settings)
    _, held_out = split_rows(settings)
    model, reference = (AutoModelForCausalLM.from_pretrained(path).eval() for _ in range(2))
    with torch.no_grad():  # a policy that differs from its reference, so the KL is not 0
        model.lm_head.weight.mul_(1.5)
    return model, reference, AutoTokenizer.from_pretrained(path), held_out


def test_evaluation_is_a_function_of_policy_and_seed(policy):
    model, reference, tokenizer, rows = policy

    def evaluate(seed: int) -> dict[str, float]:
        return evaluate_policy(model, reference, tokenizer, rows, group=4, max_new_tokens=3, seed=seed)

    torch.manual_seed(1)
    first = evaluate(7)
    torch.manual_seed(2)  # whatever the global stream, the seed alone sets the samples
    assert evaluate(7) == first
    assert first["kl"] > 0
    assert evaluate(8) != first  # the seed reaches the sampling


def test_evaluation_leaves_the_global_random_state_alone(policy):
    model, reference, tokenizer, rows = policy
    torch.manual_seed(3)
    random.seed(3)
    torch_state, python_state = torch.get_rng_state(), random.getstate()
    evaluate_policy(model, reference, tokenizer, rows, group=4, max_new_tokens=3, seed=7)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert random.getstate() == python_state
