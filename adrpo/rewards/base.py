"""The reward protocol and the validation of what a reward returns.

A flow reward is any callable ``reward(samples, prompts) -> (N,)`` where ``samples`` is the
(N, *D) batch the model generated (decoded images for pixel rewards) and ``prompts`` the N
prompt strings. It may return a tensor, a NumPy array or a sequence of numbers; anything
else, the wrong length, or a NaN/inf value is refused with a :class:`RewardError` naming the
method, the step, the reward, the sample index and its prompt.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import torch


class FlowReward(Protocol):
    def __call__(self, samples: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """(N, *D) samples and N prompts -> (N,) rewards, higher is better."""
        ...


class RewardError(ValueError):
    """A reward returned something unusable."""


def reward_name(reward: object) -> str:
    """A readable name for a reward callable (function, functools.partial or object)."""
    return getattr(reward, "__name__", None) or type(reward).__name__


def validate_rewards(
    value: object, *, prompts: Sequence[str], method: str, step: int, reward: str, first_index: int = 0
) -> torch.Tensor:
    """Check and convert a reward's output to a float32 (N,) tensor.

    ``step`` is the step being taken, 1-based like the rows of ``metrics.jsonl``;
    ``first_index`` is the batch index of ``prompts[0]`` when a reward sees a chunk.

    Raises:
        RewardError: wrong type, wrong length, or a non-finite value; the message names
            the method, the step, the reward and (for values) the first bad sample.
    """
    where = f"method={method!r}, step {step}, reward {reward!r}"
    n = len(prompts)
    if isinstance(value, torch.Tensor):
        tensor = value.detach()
    elif hasattr(value, "__array__") or (
        isinstance(value, Sequence) and not isinstance(value, (str, bytes))
    ):
        try:
            tensor = torch.as_tensor(value, dtype=torch.float32)
        except (TypeError, ValueError) as err:
            raise RewardError(f"{where}: returned values that are not numbers ({err})") from err
    else:
        raise RewardError(
            f"{where}: returned {type(value).__name__}; expected a tensor, array or sequence of {n} floats"
        )
    if not (tensor.is_floating_point() or tensor.dtype in (torch.int32, torch.int64, torch.bool)):
        raise RewardError(f"{where}: returned dtype {tensor.dtype}; expected real numbers")
    tensor = tensor.float().reshape(-1) if tensor.dim() == 2 and tensor.shape[1] == 1 else tensor.float()
    if tensor.shape != (n,):
        raise RewardError(f"{where}: returned shape {tuple(tensor.shape)}; expected ({n},), one per sample")
    bad = (~torch.isfinite(tensor)).nonzero().flatten()
    if bad.numel():
        i = int(bad[0])
        value_i = tensor[i].item()
        kind = "NaN" if math.isnan(value_i) else "inf"
        raise RewardError(
            f"{where}: sample {first_index + i} (prompt {prompts[i]!r}) got {kind} "
            f"({bad.numel()} non-finite of {n})"
        )
    return tensor
