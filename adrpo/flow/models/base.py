"""The protocol every velocity model satisfies, in adrpo's convention (see ``adrpo.core.paths``).

An adapter owns the mapping from prompt strings to conditioning tensors, so that the trainer
only ever sees prompts, tensors and velocities. A new model family is one file beside this one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class VelocityModel(Protocol):
    """v_θ(x_t, t, c) with t = 0 noise, t = 1 data; returns u_t = x1 − x0 in expectation.

    Attributes:
        data_shape: D, the shape of one sample, e.g. (64,) or (C, H, W).
    """

    data_shape: tuple[int, ...]

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """(N, *D) states, (N,) times in [0, 1], (N, ...) conditioning -> (N, *D) velocities."""
        ...

    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """N prompts -> (N, ...) conditioning; raises ValueError naming an unusable prompt."""
        ...

    def null_condition(self, n: int) -> torch.Tensor:
        """(n, ...) unconditional conditioning, the negative of classifier-free guidance."""
        ...
