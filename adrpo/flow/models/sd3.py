"""Stable Diffusion 3 (diffusers ``SD3Transformer2DModel``) as an adrpo velocity model.

Conventions (see ``adrpo.core.paths``): diffusers' SD3 is called with sigma = 1 − t (sigma = 1
is noise) as ``timestep = 1000·sigma`` and predicts noise − data = −u_t, so
v_θ(x_t, t, c) = −transformer(x_t, timestep=1000·(1 − t), c). The data are VAE latents
(C, H/8, W/8); images are decoded only where a reward needs pixels (:class:`LatentDecoder`).

Conditioning comes from the pipeline's own ``encode_prompt`` (CLIP-L, CLIP-G and T5, any of
which may be absent), computed once per prompt and cached. To travel through the trainer as
one tensor, the (N, L, D) prompt embeddings and the (N, P) pooled projection are packed as
(N, L + 1, D): the pooled vector, zero-padded to D, is the last token (P <= D holds for SD3:
P = 2048, D = 4096).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from adrpo.core.paths import t_to_sigma, velocity_from_diffusers

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


def pipeline_encoder(pipeline, *, max_sequence_length: int = 256) -> PromptEncoder:
    """The pipeline's ``encode_prompt`` as ``prompts -> (embeds, pooled)``, no guidance pairs."""

    @torch.no_grad()
    def encode(prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        embeds, _, pooled, _ = pipeline.encode_prompt(
            prompt=prompts, prompt_2=None, prompt_3=None, do_classifier_free_guidance=False,
            device=pipeline.transformer.device, max_sequence_length=max_sequence_length,
        )
        return embeds, pooled

    return encode


class SD3Velocity(nn.Module):
    """v_θ(x_t, t, c) of an SD3 transformer in adrpo's convention.

    Args:
        transformer: a diffusers ``SD3Transformer2DModel`` (the trained part; LoRA attaches here).
        encode: ``prompts -> ((N, L, D) embeds, (N, P) pooled)``, e.g. :func:`pipeline_encoder`.
        resolution: image side in pixels; latents are (C, resolution // vae_scale, same).
        vae_scale: the VAE's downsampling factor (8 for SD3).
    """

    def __init__(self, transformer: nn.Module, encode: PromptEncoder, *, resolution: int, vae_scale: int = 8):
        super().__init__()
        if resolution % (vae_scale * transformer.config.patch_size):
            raise ValueError(f"resolution {resolution} must be a multiple of {vae_scale * transformer.config.patch_size}")
        self.transformer = transformer
        self.encode = encode
        side = resolution // vae_scale
        self.data_shape = (transformer.config.in_channels, side, side)
        self.pooled_dim = transformer.config.pooled_projection_dim
        self._cache: dict[str, torch.Tensor] = {}

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w), (N,), (N, L + 1, D) -> (N, C, h, w)."""
        embeds, pooled = unpack_condition(cond, self.pooled_dim)
        prediction = self.transformer(
            hidden_states=x_t, encoder_hidden_states=embeds, pooled_projections=pooled,
            timestep=1000 * t_to_sigma(t), return_dict=False,
        )[0]
        return velocity_from_diffusers(prediction)

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """N prompts -> (N, L + 1, D), encoding each distinct prompt once per model."""
        missing = sorted({p for p in prompts if p not in self._cache})
        if missing:
            embeds, pooled = self.encode(missing)
            if embeds.shape[0] != len(missing):
                raise ValueError(f"the prompt encoder returned {embeds.shape[0]} rows for {len(missing)} prompts")
            for prompt, row in zip(missing, pack_condition(embeds, pooled)):
                self._cache[prompt] = row
        device = next(self.transformer.parameters()).device
        return torch.stack([self._cache[p] for p in prompts]).to(device)

    def null_condition(self, n: int) -> torch.Tensor:
        """(n, L + 1, D): the encoded empty prompt, the negative of classifier-free guidance."""
        return self.encode_prompts([""]).expand(n, -1, -1)


class LatentDecoder:
    """SD3 latents -> images in [0, 1]: (N, C, h, w) -> (N, 3, H, W), through the pipeline's VAE."""

    def __init__(self, vae: nn.Module):
        self.vae = vae
        self.scaling = vae.config.scaling_factor
        self.shift = vae.config.shift_factor or 0.0

    @torch.no_grad()
    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        vae_dtype = next(self.vae.parameters()).dtype
        images = self.vae.decode((latents / self.scaling + self.shift).to(vae_dtype), return_dict=False)[0]
        return ((images.float() + 1) / 2).clamp(0, 1)
