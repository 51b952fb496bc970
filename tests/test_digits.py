"""The digits miniature: data, prompts, the cached pretrained models, the reward and the
evaluator, on tiny pretraining settings built once per session (see conftest)."""

from __future__ import annotations

import pytest
import torch

from adrpo.flow.trainer import FlowTrainer
from adrpo.tasks import build_task, digits
from adrpo.tasks.digits import (
    DIGIT_WORDS,
    HELD_OUT,
    PROMPTS,
    STYLES,
    TRAIN_PROMPTS,
    DigitsTask,
    PretrainSettings,
    load_digit_data,
)
from conftest import TINY_SETTINGS, make_config


@pytest.fixture(scope="module")
def data():
    return load_digit_data()


def test_digit_data_shapes_range_and_prompt_ids(data):
    images, ids = data
    assert images.shape == (1797, 64) and images.dtype == torch.float32
    assert ids.shape == (1797,) and ids.dtype == torch.long
    assert images.min() == -1.0 and images.max() == 1.0  # pixels 0..16 -> [−1, 1]
    counts = torch.bincount(ids, minlength=len(PROMPTS))
    assert len(counts) == 20 and (counts > 0).all()
    for digit in range(10):
        bold, thin = counts[2 * digit].item(), counts[2 * digit + 1].item()
        total = bold + thin
        # "bold" = ink strictly above the class median, so it is at most half (ties go thin).
        assert bold <= total / 2 and bold >= 0.45 * total, (digit, bold, thin)
    # Bold images of a digit carry more ink than its thin ones.
    ink = images.sum(dim=1)
    for digit in range(10):
        assert ink[ids == 2 * digit].min() >= ink[ids == 2 * digit + 1].max()


def test_prompts_split_into_train_and_held_out():
    assert len(PROMPTS) == len(set(PROMPTS)) == 20
    assert PROMPTS[2 * 7] == "a bold seven" and PROMPTS[2 * 7 + 1] == "a thin seven"
    assert set(TRAIN_PROMPTS).isdisjoint(HELD_OUT)
    assert set(TRAIN_PROMPTS) | set(HELD_OUT) == set(PROMPTS)
    assert (len(TRAIN_PROMPTS), len(HELD_OUT)) == (14, 6)
    train_words = {word for prompt in TRAIN_PROMPTS for word in prompt.split()}
    assert set(DIGIT_WORDS) <= train_words and set(STYLES) <= train_words


def test_reward_is_a_probability_and_prefers_the_true_prompt(digits_task, data):
    images, ids = data
    reward = digits_task.reward
    own, other = [], []
    for i, prompt in enumerate(PROMPTS):
        x = images[ids == i]
        mine = reward(x, [prompt] * len(x))
        assert ((mine >= 0) & (mine <= 1)).all()
        own.append(mine.mean().item())
        other.append(torch.stack([reward(x, [q] * len(x)).mean() for q in PROMPTS if q != prompt]).mean().item())
    # Every prompt's real images score higher on their own prompt than on the others on average.
    assert all(o > 3 * m for o, m in zip(own, other)), list(zip(own, other))
    # Probabilities over the 20 prompts sum to 1 per image.
    x = images[:5]
    total = sum(reward(x, [p] * 5) for p in PROMPTS)
    torch.testing.assert_close(total, torch.ones(5))


def test_cache_is_reused_and_keyed_by_settings(digits_cache, monkeypatch):
    settings = PretrainSettings(**TINY_SETTINGS)
    assert (digits_cache / "digits" / f"models-{settings.key()}.pt").exists()

    def no_training(*args, **kwargs):
        raise AssertionError("retrained although the cache holds these settings")

    for name in ("pretrain_flow_model", "pretrain_classifier", "pretrain_autoencoder"):
        monkeypatch.setattr(digits, name, no_training)
    task = DigitsTask(settings, eval_samples=2, cache=digits_cache)
    assert task.base_config["width"] == TINY_SETTINGS["flow_width"]
    # Settings as a plain dict (the YAML form) hit the same cache entry.
    DigitsTask(dict(TINY_SETTINGS), eval_samples=2, cache=digits_cache)

    changed = PretrainSettings(**{**TINY_SETTINGS, "flow_steps": 151})
    assert changed.key() != settings.key()
    assert PretrainSettings(**TINY_SETTINGS).key() == settings.key()
    with pytest.raises(AssertionError, match="retrained"):  # a new key misses the cache
        DigitsTask(changed, eval_samples=2, cache=digits_cache)


def test_base_model_is_a_fresh_copy_each_time(digits_task):
    first, second = digits_task.base_model(), digits_task.base_model()
    with torch.no_grad():
        next(first.parameters()).add_(1.0)
    assert torch.equal(next(second.parameters()), next(digits_task.base_model().parameters()))
    assert not torch.equal(next(first.parameters()), next(second.parameters()))


def test_evaluate_at_step_zero_is_exact_and_deterministic(digits_task, tmp_path):
    config = make_config(tmp_path, num_steps=2, learning_rate=1e-3, prompts_per_step=2, group_size=4)
    trainer = FlowTrainer(config, digits_task.base_model(), digits_task.reward, digits_task.train_prompts,
                          diversity_fn=digits_task.embed)
    generator_state = trainer.state.generator.get_state()
    first = digits_task.evaluate(trainer)
    second = digits_task.evaluate(trainer)
    assert first == second
    assert first["w2"] == 0.0
    assert 0.0 < first["reward"] < 1.0 and first["diversity"] > 0.0
    # Evaluation uses its own fixed noise, not the training stream.
    assert torch.equal(trainer.state.generator.get_state(), generator_state)

    rows = trainer.train(evaluator=digits_task.evaluate, eval_steps=1)
    assert [row["step"] for row in rows] == [0, 1, 2]
    assert rows[0] == {"step": 0, **{f"eval/{k}": v for k, v in first.items()}}
    assert rows[-1]["eval/w2"] > 0.0
    assert "diversity" in rows[-1] and rows[-1]["diversity"] > 0.0  # training-batch diversity


def test_build_task_offsets_eval_seed_and_refuses_unknown_task(digits_cache):
    args = {"settings": dict(TINY_SETTINGS), "cache": digits_cache, "eval_samples": 2}
    seed0, again, seed1 = (build_task("digits", args, seed=s) for s in (0, 0, 1))
    assert torch.equal(seed0.eval_x0, again.eval_x0)
    assert not torch.equal(seed0.eval_x0, seed1.eval_x0)
    assert seed0.eval_x0.shape == (len(HELD_OUT) * 2, 64)
    assert seed0.eval_prompts[:2] == [HELD_OUT[0]] * 2  # prompt-major
    with pytest.raises(ValueError, match="unknown task 'mnist'"):
        build_task("mnist", {}, seed=0)


def test_cache_given_as_a_string_like_yaml_gives_it(digits_cache, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("retrained although the cache holds these settings")

    monkeypatch.setattr(digits, "pretrain_flow_model", no_training)
    task = build_task("digits", {"settings": dict(TINY_SETTINGS), "cache": str(digits_cache), "eval_samples": 2}, seed=0)
    assert task.base_config["width"] == TINY_SETTINGS["flow_width"]
