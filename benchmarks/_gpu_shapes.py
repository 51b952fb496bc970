"""The shapes of ``gpu_check.py``: the real architectures' configs and each section's run settings, full
size or ``tiny`` (the same fields with small numbers, for the CPU run of the same code path).

Full-size configs are the published ones (random weights are built from them; nothing is downloaded):

- SD3-medium's ``transformer/config.json`` (stabilityai/stable-diffusion-3-medium-diffusers): 24 joint
  blocks of 24 heads × 64, caption projection 1536, no dual attention, no QK norm (diffusers' defaults for
  the last two). Its text conditioning is CLIP-L + CLIP-G (77 tokens, 768 + 1280 = 2048 wide, zero-padded
  to 4096) followed by 256 T5 tokens: (N, 333, 4096), pooled (N, 2048).
- FLUX.1-dev's: 19 double + 38 single blocks of 24 heads × 128, RoPE axes (16, 56, 56), guidance
  embedding (diffusers' defaults except ``guidance_embeds``). Conditioning: 512 T5 tokens (N, 512, 4096),
  pooled CLIP-L (N, 768).
- Qwen2.5-7B's ``config.json``: hidden 3584, 28 layers, 28 heads (head dim 128), 4 KV heads,
  intermediate 18944, vocabulary 152064, RoPE θ 10⁶, untied embeddings.
"""

from __future__ import annotations

from typing import Any

LORA_TARGETS_IMAGE = ["to_q", "to_k", "to_v", "to_out.0"]
LORA_TARGETS_LLM = ["q_proj", "k_proj", "v_proj", "o_proj"]


def sd3_config(tiny: bool) -> dict[str, Any]:
    """``SD3Transformer2DModel`` keyword arguments: SD3-medium, or 2 narrow layers."""
    medium = dict(
        sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24, attention_head_dim=64,
        num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048,
        pos_embed_max_size=192,
    )
    if not tiny:
        return medium
    return {**medium, "sample_size": 8, "num_layers": 2, "attention_head_dim": 16, "num_attention_heads": 2,
            "joint_attention_dim": 32, "caption_projection_dim": 32, "pooled_projection_dim": 16, "pos_embed_max_size": 16}


def flux_config(tiny: bool) -> dict[str, Any]:
    """``FluxTransformer2DModel`` keyword arguments: FLUX.1-dev (12B), or 1 + 2 narrow blocks."""
    dev = dict(
        patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128, num_attention_heads=24,
        joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56),
    )
    if not tiny:
        return dev
    return {**dev, "num_layers": 1, "num_single_layers": 2, "attention_head_dim": 16, "num_attention_heads": 2,
            "joint_attention_dim": 32, "pooled_projection_dim": 16, "axes_dims_rope": (4, 6, 6)}


def qwen2_config(tiny: bool) -> dict[str, Any]:
    """transformers ``Qwen2Config`` keyword arguments: Qwen2.5-7B, or 2 layers of width 32. Token ids
    0 = pad, 1 = eos (the offline character tokenizer's)."""
    sizes = dict(hidden_size=3584, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                 intermediate_size=18944, vocab_size=152064, max_position_embeddings=32768)
    if tiny:
        sizes = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                     intermediate_size=64, vocab_size=64, max_position_embeddings=128)
    return dict(**sizes, rope_theta=1_000_000.0, rms_norm_eps=1e-6, tie_word_embeddings=False, pad_token_id=0, eos_token_id=1, bos_token_id=1)


def sd3_run(tiny: bool) -> dict[str, Any]:
    """Section 1's settings: 512 px (64 × 64 × 16 latents), B·G = 2·8 = 16, 20 Euler steps with CFG 4.5
    (flow_grpo's SD3 setting), LoRA rank 32; two methods in ABBA blocks."""
    if tiny:
        return dict(resolution=64, text_tokens=8, prompts_per_step=2, group_size=2, sampling_steps=2, guidance_scale=4.5,
                    lora_rank=4, rounds=2, steps_per_block=1, warmup=1)
    return dict(resolution=512, text_tokens=333, prompts_per_step=2, group_size=8, sampling_steps=20, guidance_scale=4.5,
                lora_rank=32, rounds=2, steps_per_block=2, warmup=1)


def flux_run(tiny: bool) -> dict[str, Any]:
    """Section 2's settings: 512 px (64 × 64 × 16 latents, 1024 packed tokens), B·G = 2·4 = 8, 20 Euler steps,
    distilled guidance 3.5 (no CFG pass), LoRA rank 32, gradient checkpointing; ADRPO-FM only."""
    if tiny:
        return dict(resolution=64, text_tokens=8, prompts_per_step=1, group_size=2, sampling_steps=2, guidance_scale=1.0,
                    lora_rank=4, rounds=1, steps_per_block=1, warmup=1)
    return dict(resolution=512, text_tokens=512, prompts_per_step=2, group_size=4, sampling_steps=20, guidance_scale=1.0,
                lora_rank=32, rounds=1, steps_per_block=2, warmup=1)


def llm_run(tiny: bool) -> dict[str, Any]:
    """Section 3's settings: 16 completions per step (G = 8) of 64 sampled tokens after 64-token prompts,
    β = β0 = 0.04, LoRA rank 32 on the attention projections, gradient checkpointing; ABBA blocks of
    ``steps_per_block`` steps whose first ``warmup`` are dropped."""
    if tiny:
        return dict(prompt_tokens=8, completion_tokens=4, batch=4, num_generations=2, beta=0.04, lora_rank=4,
                    rounds=2, steps_per_block=2, warmup=1)
    return dict(prompt_tokens=64, completion_tokens=64, batch=16, num_generations=8, beta=0.04, lora_rank=32,
                rounds=2, steps_per_block=3, warmup=1)
