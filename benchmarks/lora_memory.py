"""Parameter bytes a FlowTrainer holds for an SD3 or FLUX transformer: LoRA mode vs full fine-tuning.

Counts every distinct tensor storage reachable from the trainer's policy, its reference model
and its sampling-policy snapshot (``sampler_refresh_every=2``, so the snapshot exists), in
both modes, on a randomly initialised SD3 (or, with ``--model flux``, FLUX) transformer built from config. LoRA mode must hold
one base model plus small adapters: the target is bytes ≤ 1.05 × (base + adapters). Full
fine-tuning keeps a frozen reference copy and a snapshot, about 3 × base; that is reported too.
Optimizer state is reported separately (it is the same per trainable parameter in both modes).

    .venv/bin/python benchmarks/lora_memory.py [--model flux]
"""

from __future__ import annotations

import argparse
import os
import tempfile

import torch
from _common import git_commit, machine
from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

from adrpo.flow.config import FlowConfig
from adrpo.flow.models.diffusers_common import CachedPromptVelocity
from adrpo.flow.models.flux import FluxVelocity
from adrpo.flow.models.sd3 import SD3Velocity
from adrpo.flow.trainer import FlowTrainer


def storages(tensors) -> dict[int, int]:
    """{storage pointer: bytes} of distinct storages."""
    return {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}


def held_parameter_bytes(trainer: FlowTrainer) -> int:
    tensors = list(trainer.policy.parameters())
    if trainer.reference is not None:
        tensors += list(trainer.reference.parameters())
    if trainer.state.snapshot is not None:
        tensors += list(trainer.state.snapshot.values())
    return sum(storages(tensors).values())


def build(args) -> CachedPromptVelocity:
    torch.manual_seed(0)
    if args.model == "flux":
        transformer = FluxTransformer2DModel(
            in_channels=64, num_layers=args.layers, num_single_layers=2 * args.layers, attention_head_dim=64, num_attention_heads=args.heads,
            joint_attention_dim=256, pooled_projection_dim=128, guidance_embeds=True, axes_dims_rope=(16, 24, 24),
        )
        return FluxVelocity(transformer, lambda prompts: (torch.zeros(len(prompts), 4, 256), torch.zeros(len(prompts), 128)), resolution=128)
    transformer = SD3Transformer2DModel(
        sample_size=16, patch_size=2, in_channels=16, num_layers=args.layers, attention_head_dim=64, num_attention_heads=args.heads,
        joint_attention_dim=256, caption_projection_dim=64 * args.heads, pooled_projection_dim=128, out_channels=16, pos_embed_max_size=16,
    )
    return SD3Velocity(transformer, lambda prompts: (torch.zeros(len(prompts), 4, 256), torch.zeros(len(prompts), 128)), resolution=128)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("sd3", "flux"), default="sd3")
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--heads", type=int, default=6)
    parser.add_argument("--rank", type=int, default=32)
    opts = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as out:
        lora_settings = {"lora_rank": opts.rank, "lora_alpha": opts.rank, "lora_target_modules": ["to_q", "to_k", "to_v", "to_out.0"]}
        for mode, lora in (("full", {}), ("lora", lora_settings)):
            model = build(opts)
            base_bytes = sum(storages(model.parameters()).values())
            config = FlowConfig(output_dir=os.path.join(out, mode), report_to=["none"], progress_bar=False, sampler_refresh_every=2, **lora)
            trainer = FlowTrainer(config, model, lambda x, p: torch.zeros(len(p)), ["a"])
            adapter_bytes = sum(p.untyped_storage().nbytes() for p in trainer.trainable.values()) if lora else 0
            results[mode] = (base_bytes, adapter_bytes, held_parameter_bytes(trainer))
    print(f"machine: {machine()}")
    print(f"commit: {git_commit()}")
    family = "SD3Transformer2DModel" if opts.model == "sd3" else f"FluxTransformer2DModel single_layers={2 * opts.layers}"
    print(f"settings: {family} layers={opts.layers} heads={opts.heads} head_dim=64, fp32, "
          f"LoRA rank {opts.rank} on to_q/to_k/to_v/to_out.0, sampler_refresh_every=2")
    mib = 2**20
    for mode, (base, adapters, held) in results.items():
        print(f"  {mode:>4}: base {base / mib:8.2f} MiB  adapters {adapters / mib:6.2f} MiB  "
              f"held by the trainer {held / mib:8.2f} MiB  = {held / (base + adapters):.3f} x (base + adapters)")
    base, adapters, held = results["lora"]
    print(f"ratio lora held / (base + adapters): {held / (base + adapters):.3f} (target <= 1.05)")


if __name__ == "__main__":
    main()
