"""validate_rewards and reward_name: what a reward may return and how refusals read."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from adrpo.rewards.base import RewardError, reward_name, validate_rewards

PROMPTS = ["a cat", "a dog", "a red car"]
WHERE = dict(prompts=PROMPTS, method="adrpo", step=7, reward="clip_score")


def _check(value):
    return validate_rewards(value, **WHERE)


@pytest.mark.parametrize(
    "value",
    [
        torch.tensor([0.5, 1.0, -2.0]),
        torch.tensor([0.5, 1.0, -2.0], dtype=torch.float64),
        torch.tensor([[0.5], [1.0], [-2.0]]),  # (N, 1)
        np.array([0.5, 1.0, -2.0]),
        np.array([[0.5], [1.0], [-2.0]], dtype=np.float32),
        [0.5, 1, -2.0],
        (0.5, 1.0, -2),
    ],
    ids=["tensor", "tensor64", "tensor_n1", "numpy", "numpy_n1", "list", "tuple"],
)
def test_accepted_values(value):
    out = _check(value)
    assert out.dtype == torch.float32 and out.shape == (3,)
    assert_close(out, torch.tensor([0.5, 1.0, -2.0]))


def test_integer_tensor_and_grad_are_converted():
    assert_close(_check(torch.tensor([1, 0, 3])), torch.tensor([1.0, 0.0, 3.0]))
    out = _check(torch.tensor([0.5, 1.0, -2.0], requires_grad=True))
    assert not out.requires_grad


@pytest.mark.parametrize(
    "value, type_name",
    [(None, "NoneType"), ("0.5 1 2", "str"), ({"a cat": 1.0}, "dict"), (3.0, "float")],
)
def test_refused_types_name_method_step_reward(value, type_name):
    with pytest.raises(RewardError) as info:
        _check(value)
    msg = str(info.value)
    assert "method='adrpo'" in msg
    assert "step 7" in msg
    assert "reward 'clip_score'" in msg
    assert f"returned {type_name}" in msg
    assert isinstance(info.value, ValueError)


def test_non_numbers_in_sequence_refused():
    with pytest.raises(RewardError, match="not numbers"):
        _check(["high", "low", "mid"])


@pytest.mark.parametrize(
    "value, got",
    [
        (torch.tensor([1.0, 2.0]), "(2,)"),
        ([1.0, 2.0, 3.0, 4.0], "(4,)"),
        (torch.zeros(3, 2), "(3, 2)"),
        (torch.tensor(1.0), "()"),
    ],
)
def test_wrong_shape_names_expected_shape(value, got):
    with pytest.raises(RewardError) as info:
        _check(value)
    msg = str(info.value)
    assert f"returned shape {got}" in msg
    assert "expected (3,)" in msg
    assert "step 7" in msg and "clip_score" in msg


def test_nan_names_sample_and_prompt():
    with pytest.raises(RewardError) as info:
        _check(torch.tensor([0.0, float("nan"), 1.0]))
    msg = str(info.value)
    assert "sample 1 (prompt 'a dog') got NaN" in msg
    assert "(1 non-finite of 3)" in msg
    assert "method='adrpo'" in msg and "step 7" in msg and "reward 'clip_score'" in msg


@pytest.mark.parametrize("bad", [float("inf"), float("-inf")])
def test_inf_names_sample_and_prompt(bad):
    with pytest.raises(RewardError) as info:
        _check([0.0, 1.0, bad])
    assert "sample 2 (prompt 'a red car') got inf" in str(info.value)


def test_first_bad_sample_is_named_and_all_counted():
    with pytest.raises(RewardError) as info:
        _check(np.array([np.inf, np.nan, 1.0]))
    msg = str(info.value)
    assert "sample 0 (prompt 'a cat') got inf" in msg
    assert "(2 non-finite of 3)" in msg


def clip_score(samples, prompts):
    return torch.zeros(len(prompts))


class AestheticScorer:
    def __call__(self, samples, prompts):
        return torch.zeros(len(prompts))


def test_reward_name():
    assert reward_name(clip_score) == "clip_score"
    # functools.partial has no __name__: falls back to the type name
    assert reward_name(functools.partial(clip_score, samples=None)) == "partial"
    assert reward_name(AestheticScorer()) == "AestheticScorer"
    assert reward_name(lambda s, p: s) == "<lambda>"
