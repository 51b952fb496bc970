"""FLUX.1 (diffusers ``FluxTransformer2DModel``) as an adrpo velocity model.

Conventions (see ``adrpo.core.paths``): FLUX is called with ``timestep = sigma = 1 − t`` (the
transformer scales it by 1000 itself) and predicts noise − data = −u_t. It works on *packed*
latents: each 2×2 patch of the (C, h, w) VAE latent becomes one token of 4·C channels, so the
transformer sees (N, h/2·w/2, 4C) with position ids ``img_ids`` (h/2·w/2, 3) = (0, row, col)
and ``txt_ids`` (L, 3) = 0. The adapter packs and unpacks, so the trainer, the losses and the
rewards see ordinary (N, C, h, w) latents; the squared errors are the same numbers either way
(packing is a permutation).

FLUX.1-dev is guidance-distilled: the guidance weight is an *input* (``guidance``, 3.5 by
default in diffusers), not a second forward pass, so train it with the trainer's
``guidance_scale: 1`` and set ``distilled_guidance`` here. FLUX.1-schnell has no guidance
input (``guidance_embeds = False``) and ignores it.

The sampler's time shift is the scheduler's resolution-dependent one: diffusers shifts sigma
by exp(mu)/(exp(mu) + 1/sigma − 1) with mu linear in the number of image tokens, which is
the SD3 shift formula with shift = exp(mu) (:func:`flux_time_shift`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from adrpo.core.paths import t_to_sigma, velocity_from_diffusers
from adrpo.errors import ConfigError
from adrpo.flow.models.diffusers_common import CachedPromptVelocity, PromptEncoder, unpack_condition


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """(N, C, h, w) -> (N, h/2·w/2, 4C): 2×2 patches, row-major, channels outermost in a patch."""
    n, c, h, w = latents.shape
    patches = latents.reshape(n, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return patches.reshape(n, (h // 2) * (w // 2), c * 4)


def unpack_latents(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(N, h/2·w/2, 4C) -> (N, C, h, w), the inverse of :func:`pack_latents`."""
    n, _, channels = tokens.shape
    patches = tokens.reshape(n, height // 2, width // 2, channels // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return patches.reshape(n, channels // 4, height, width)


def latent_image_ids(height: int, width: int) -> torch.Tensor:
    """(h/2·w/2, 3) position ids (0, row, col) of the packed tokens of an (h, w) latent."""
    rows = torch.arange(height // 2).repeat_interleave(width // 2)
    cols = torch.arange(width // 2).repeat(height // 2)
    return torch.stack([torch.zeros_like(rows), rows, cols], dim=1).float()


def flux_time_shift(scheduler_config: Mapping, image_tokens: int) -> float:
    """The SD3-form shift s (sigma' = s·sigma / (1 + (s − 1)·sigma)) that reproduces the
    scheduler's sigmas for ``image_tokens`` packed tokens: exp(mu) under dynamic exponential
    shifting (mu linear in the token count, as diffusers' ``calculate_shift``), mu under
    linear shifting, the static ``shift`` otherwise."""
    if not scheduler_config.get("use_dynamic_shifting", False):
        return float(scheduler_config.get("shift", 1.0))
    base_len, max_len = scheduler_config.get("base_image_seq_len", 256), scheduler_config.get("max_image_seq_len", 4096)
    base_shift, max_shift = scheduler_config.get("base_shift", 0.5), scheduler_config.get("max_shift", 1.15)
    slope = (max_shift - base_shift) / (max_len - base_len)
    mu = base_shift + slope * (image_tokens - base_len)
    if scheduler_config.get("time_shift_type", "exponential") == "linear":
        return float(mu)
    return math.exp(mu)


def flux_prompt_encoder(pipeline, *, max_sequence_length: int = 512) -> PromptEncoder:
    """A FLUX pipeline's ``encode_prompt`` as ``prompts -> (T5 embeds, CLIP pooled)``."""

    @torch.no_grad()
    def encode(prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        embeds, pooled, _ = pipeline.encode_prompt(
            prompt=prompts, prompt_2=None, device=pipeline.transformer.device, max_sequence_length=max_sequence_length,
        )
        return embeds, pooled

    return encode


class FluxVelocity(CachedPromptVelocity):
    """v_θ(x_t, t, c) of a FLUX transformer in adrpo's convention, on unpacked latents.

    Args:
        transformer: a diffusers ``FluxTransformer2DModel`` (``patch_size`` 1, packed input).
        encode: ``prompts -> ((N, L, D) embeds, (N, P) pooled)``, e.g. :func:`flux_prompt_encoder`.
        resolution: image side in pixels; latents are (in_channels / 4, resolution // vae_scale, same).
        vae_scale: the VAE's downsampling factor (8 for FLUX).
        distilled_guidance: the guidance input of guidance-distilled models (FLUX.1-dev).
        time_shift: the sampler's default shift; None derives it from ``scheduler_config``.
        scheduler_config: the pipeline scheduler's config (for :func:`flux_time_shift`).
    """

    def __init__(self, transformer: nn.Module, encode: PromptEncoder, *, resolution: int, vae_scale: int = 8,
                 distilled_guidance: float = 3.5, time_shift: float | None = None, scheduler_config: Mapping | None = None):
        if resolution % (vae_scale * 2):
            raise ConfigError(f"resolution {resolution} must be a multiple of {vae_scale * 2} (2×2 latent patches)")
        if transformer.config.in_channels % 4:
            raise ConfigError(f"FLUX in_channels {transformer.config.in_channels} is not 4 × latent channels")
        side = resolution // vae_scale
        if time_shift is None:
            time_shift = flux_time_shift(scheduler_config or {}, (side // 2) ** 2)
        super().__init__(transformer, encode, pooled_dim=transformer.config.pooled_projection_dim, time_shift=time_shift)
        self.data_shape = (transformer.config.in_channels // 4, side, side)
        self.distilled_guidance = float(distilled_guidance)
        self.register_buffer("img_ids", latent_image_ids(side, side), persistent=False)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w), (N,), (N, L + 1, D) -> (N, C, h, w)."""
        embeds, pooled = unpack_condition(cond.to(self.compute_dtype), self.pooled_dim)
        guidance = None
        if self.transformer.config.guidance_embeds:
            guidance = torch.full_like(t, self.distilled_guidance, dtype=torch.float32)
        prediction = self.transformer(
            hidden_states=pack_latents(x_t.to(self.compute_dtype)), encoder_hidden_states=embeds, pooled_projections=pooled,
            timestep=t_to_sigma(t), img_ids=self.img_ids.to(self.compute_dtype),
            txt_ids=embeds.new_zeros(embeds.shape[1], 3), guidance=guidance, return_dict=False,
        )[0]
        return velocity_from_diffusers(unpack_latents(prediction.to(x_t.dtype), *x_t.shape[-2:]))
