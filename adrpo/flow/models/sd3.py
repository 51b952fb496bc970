"""Stable Diffusion 3 (diffusers ``SD3Transformer2DModel``) as an adrpo velocity model.

Conventions (see ``adrpo.core.paths``): diffusers' SD3 is called with sigma = 1 − t (sigma = 1
is noise) as ``timestep = 1000·sigma`` and predicts noise − data = −u_t, so
v_θ(x_t, t, c) = −transformer(x_t, timestep=1000·(1 − t), c). The data are VAE latents
(C, H/8, W/8); images are decoded only where a reward needs pixels
(:class:`adrpo.flow.models.diffusers_common.LatentDecoder`).

Given the pipeline's scheduler, :meth:`SD3Velocity.time_grid` is the scheduler's own sigmas
for N steps, so that sampling with it reproduces the pipeline's default call (tested); a fixed
``time_shift`` (the trainer's config) reproduces the pipeline called with
``sigmas = linspace(1, 1/N, N)`` (also tested).

Conditioning comes from the pipeline's own ``encode_prompt`` (CLIP-L, CLIP-G and T5, any of
which may be absent), computed once per prompt and cached, packed as in
:mod:`adrpo.flow.models.diffusers_common`.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from adrpo.core.paths import sigma_to_t, t_to_sigma, velocity_from_diffusers
from adrpo.errors import ConfigError
from adrpo.flow.models.diffusers_common import CachedPromptVelocity, PromptEncoder, unpack_condition


def sd3_prompt_encoder(pipeline, *, max_sequence_length: int = 256) -> PromptEncoder:
    """An SD3 pipeline's ``encode_prompt`` as ``prompts -> (embeds, pooled)``, no guidance pairs."""

    @torch.no_grad()
    def encode(prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        embeds, _, pooled, _ = pipeline.encode_prompt(
            prompt=prompts, prompt_2=None, prompt_3=None, do_classifier_free_guidance=False,
            device=pipeline.transformer.device, max_sequence_length=max_sequence_length,
        )
        return embeds, pooled

    return encode


class SD3Velocity(CachedPromptVelocity):
    """v_θ(x_t, t, c) of an SD3 transformer in adrpo's convention.

    Args:
        transformer: a diffusers ``SD3Transformer2DModel``.
        encode: ``prompts -> ((N, L, D) embeds, (N, P) pooled)``, e.g. :func:`sd3_prompt_encoder`.
        resolution: image side in pixels; latents are (C, resolution // vae_scale, same).
        vae_scale: the VAE's downsampling factor (8 for SD3).
        scheduler (FlowMatchEulerDiscreteScheduler | None): the pipeline's scheduler (a private copy is kept);
            without one the grid is SD3's shift of 3 on linspace(1, 0, N + 1).
    """

    def __init__(self, transformer: nn.Module, encode: PromptEncoder, *, resolution: int, vae_scale: int = 8, scheduler=None):
        shift = scheduler.config.shift if scheduler is not None else 3.0
        super().__init__(transformer, encode, pooled_dim=transformer.config.pooled_projection_dim, time_shift=shift)
        self.scheduler = copy.deepcopy(scheduler)
        if resolution % (vae_scale * transformer.config.patch_size):
            raise ConfigError(f"resolution {resolution} must be a multiple of {vae_scale * transformer.config.patch_size}")
        side = resolution // vae_scale
        self.data_shape = (transformer.config.in_channels, side, side)

    def time_grid(self, num_steps: int) -> torch.Tensor:
        """(num_steps + 1,) times 1 − sigma of the scheduler's ``set_timesteps(num_steps)``."""
        if self.scheduler is None:
            return super().time_grid(num_steps)
        self.scheduler.set_timesteps(num_steps, device="cpu")
        return sigma_to_t(self.scheduler.sigmas.double()).float()

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w), (N,), (N, L + 1, D) -> (N, C, h, w)."""
        embeds, pooled = unpack_condition(cond.to(self.compute_dtype), self.pooled_dim)
        prediction = self.transformer(
            hidden_states=x_t.to(self.compute_dtype), encoder_hidden_states=embeds, pooled_projections=pooled,
            timestep=1000 * t_to_sigma(t), return_dict=False,
        )[0]
        return velocity_from_diffusers(prediction.to(x_t.dtype))
