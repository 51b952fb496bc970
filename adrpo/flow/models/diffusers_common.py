"""What the diffusers adapters (SD3, FLUX) share: text conditioning cached per prompt and
packed into one tensor, and VAE decoding of latents for rewards that need pixels.

To travel through the trainer as one tensor, a pipeline's (N, L, D) prompt embeddings and its
(N, P) pooled projection are packed as (N, L + 1, D): the pooled vector, zero-padded to D, is
the last token (P <= D holds for SD3: P = 2048, D = 4096, and FLUX: P = 768, D = 4096).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from adrpo.core.paths import shifted_time_grid

PromptEncoder = Callable[[list[str]], tuple[torch.Tensor, torch.Tensor]]


def pack_condition(embeds: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
    """(N, L, D) embeddings and (N, P) pooled projections -> (N, L + 1, D)."""
    if pooled.shape[-1] > embeds.shape[-1]:
        raise ValueError(f"pooled dim {pooled.shape[-1]} exceeds the embedding dim {embeds.shape[-1]}")
    padded = nn.functional.pad(pooled, (0, embeds.shape[-1] - pooled.shape[-1]))
    return torch.cat([embeds, padded.unsqueeze(1)], dim=1)


def unpack_condition(cond: torch.Tensor, pooled_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, L + 1, D) -> (N, L, D) embeddings and (N, P) pooled projections."""
    return cond[:, :-1], cond[:, -1, :pooled_dim]


class CachedPromptVelocity(nn.Module):
    """Base of the diffusers adapters: prompt encoding once per distinct prompt, the empty
    prompt as the guidance negative, and the sampler's default time shift.

    Args:
        transformer: the diffusers transformer (the trained part; LoRA attaches here).
        encode: ``prompts -> ((N, L, D) embeds, (N, P) pooled)``.
        pooled_dim: P.
        time_shift: the pipeline scheduler's shift, behind :meth:`time_grid`.

    The transformer runs in its own dtype (e.g. bfloat16 weights, with or without autocast);
    states and velocities stay in the trainer's dtype (float32) on either side of it.
    """

    data_shape: tuple[int, ...]

    def __init__(self, transformer: nn.Module, encode: PromptEncoder, *, pooled_dim: int, time_shift: float):
        super().__init__()
        self.transformer = transformer
        self.encode = encode
        self.pooled_dim = pooled_dim
        self.time_shift = float(time_shift)
        self.compute_dtype = next(transformer.parameters()).dtype  # the base weights' (LoRA comes later, in float32)
        # the transformer's block classes: accelerate's FSDP TRANSFORMER_BASED_WRAP shards each block separately
        self._no_split_modules = list(getattr(transformer, "_no_split_modules", None) or [])
        self._cache: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """N prompts -> (N, L + 1, D), encoding each distinct prompt once per model."""
        missing = sorted({p for p in prompts if p not in self._cache})
        if missing:
            embeds, pooled = self.encode(missing)
            if embeds.shape[0] != len(missing) or pooled.shape[0] != len(missing):
                raise ValueError(f"the prompt encoder returned {embeds.shape[0]} rows for {len(missing)} prompts")
            for prompt, row in zip(missing, pack_condition(embeds, pooled)):
                self._cache[prompt] = row
        device = next(self.transformer.parameters()).device
        return torch.stack([self._cache[p] for p in prompts]).to(device)

    def time_grid(self, num_steps: int) -> torch.Tensor:
        """(num_steps + 1,) sampling times, the trainer's default when its ``time_shift`` is unset."""
        return shifted_time_grid(num_steps, shift=self.time_shift)

    def null_condition(self, n: int) -> torch.Tensor:
        """(n, L + 1, D): the encoded empty prompt, the negative of classifier-free guidance."""
        return self.encode_prompts([""]).expand(n, -1, -1)


class LatentDecoder:
    """Latents -> images in [0, 1]: (N, C, h, w) -> (N, 3, H, W), through a pipeline's VAE
    (undoing its ``scaling_factor`` and ``shift_factor``).

    The last call's images are kept, so that several rewards and the diversity embedding of
    the same latents decode them once. The cache holds the latents themselves (their memory
    cannot be reused while cached) and is keyed by their address, layout and version counter,
    so a different or in-place-modified tensor decodes anew.
    """

    def __init__(self, vae: nn.Module):
        self.vae = vae
        self.scaling = vae.config.scaling_factor
        self.shift = vae.config.shift_factor or 0.0
        self._last: tuple[tuple, torch.Tensor, torch.Tensor] | None = None

    @torch.no_grad()
    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        key = (latents.data_ptr(), latents.device, tuple(latents.shape), latents.stride(), latents._version)
        if self._last is not None and self._last[0] == key:
            return self._last[2]
        vae_dtype = next(self.vae.parameters()).dtype
        images = self.vae.decode((latents / self.scaling + self.shift).to(vae_dtype), return_dict=False)[0]
        images = ((images.float() + 1) / 2).clamp(0, 1)
        self._last = (key, latents, images)
        return images
