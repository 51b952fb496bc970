"""A prompt-conditional MLP velocity model for vector data (the digits miniature).

Prompts are parsed against per-factor vocabularies: with factors
``[["zero", ..., "nine"], ["bold", "thin"]]`` the prompt "a bold seven" becomes the ids
(7, 0). A factor the prompt does not mention gets that factor's null id, which is also what
classifier-free guidance's unconditional branch uses. The conditioning embedding is the sum
of the factor embeddings, so unseen combinations of seen words are still expressible.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import torch
from torch import nn


def time_features(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of t: (N,) -> (N, dim)."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, device=t.device) * (-math.log(1000.0) / max(half - 1, 1)))
    angles = 1000.0 * t.unsqueeze(1) * freqs.unsqueeze(0)  # (N, half)
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class ResidualBlock(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.proj = nn.Linear(width, width)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.proj(nn.functional.silu(self.norm(h)))


class MLPVelocityModel(nn.Module):
    """v_θ(x_t, t, c) for flat data of D = ``data_dim`` values.

    Args:
        data_dim: D.
        vocab: one list of words per conditioning factor.
        width: hidden width.
        depth: number of residual blocks.
        time_dim: size of the sinusoidal time features.
    """

    def __init__(
        self,
        data_dim: int,
        vocab: Sequence[Sequence[str]],
        *,
        width: int = 256,
        depth: int = 3,
        time_dim: int = 32,
    ):
        super().__init__()
        self.data_shape = (data_dim,)
        self.vocab = [list(words) for words in vocab]
        self.config = {"data_dim": data_dim, "vocab": self.vocab, "width": width, "depth": depth, "time_dim": time_dim}
        self.time_dim = time_dim
        self._ids: dict[str, tuple[int, ...]] = {}  # prompt -> ids, filled by encode_prompts
        self.embeddings = nn.ModuleList(nn.Embedding(len(words) + 1, width) for words in self.vocab)
        self.proj_in = nn.Linear(data_dim + time_dim, width)
        self.blocks = nn.ModuleList(ResidualBlock(width) for _ in range(depth))
        self.norm_out = nn.LayerNorm(width)
        self.proj_out = nn.Linear(width, data_dim)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """(N, D), (N,), (N, F) long ids -> (N, D)."""
        h = self.proj_in(torch.cat([x_t, time_features(t, self.time_dim)], dim=1))
        for factor, embedding in enumerate(self.embeddings):
            h = h + embedding(cond[:, factor])
        for block in self.blocks:
            h = block(h)
        return self.proj_out(nn.functional.silu(self.norm_out(h)))

    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """N prompts -> (N, F) long ids; a prompt naming two words of one factor is refused.

        Each distinct prompt is parsed once (a step encodes the same few prompts again and again)."""
        rows = [self._ids[prompt] if prompt in self._ids else self._parse(prompt) for prompt in prompts]
        return torch.tensor(rows, dtype=torch.long, device=self.proj_in.weight.device)

    def _parse(self, prompt: str) -> tuple[int, ...]:
        """One prompt's (F,) ids, remembered in ``self._ids``."""
        words = set(re.findall(r"[a-z]+", prompt.lower()))
        row = []
        for factor, vocab in enumerate(self.vocab):
            hits = [i for i, word in enumerate(vocab) if word in words]
            if len(hits) > 1:
                raise ValueError(f"prompt {prompt!r} names {len(hits)} words of factor {factor}: {[vocab[i] for i in hits]}")
            row.append(hits[0] if hits else len(vocab))
        self._ids[prompt] = tuple(row)
        return self._ids[prompt]

    def null_condition(self, n: int) -> torch.Tensor:
        """(n, F) null ids."""
        null = torch.tensor([len(words) for words in self.vocab], device=self.proj_in.weight.device)
        return null.unsqueeze(0).expand(n, -1).clone()
