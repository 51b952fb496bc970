"""LoRA through peft: the reference is the base model with adapters disabled, so no second
copy of the weights is held. With a moving reference (``sync_ref_model``) the reference is the
base plus reference adapters swapped into the adapter parameters (:mod:`adrpo.flow.reference`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn


def add_lora(model: nn.Module, *, rank: int, alpha: float, target_modules: Sequence[str]) -> nn.Module:
    """Wrap ``model`` in a peft LoRA model; only the adapter weights stay trainable."""
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(target_modules)))


@contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[None]:
    """Run the base model: inside the block the LoRA adapters contribute nothing."""
    with model.disable_adapter():
        yield


def adapter_state_dict(model: nn.Module, *, prefix: str) -> dict[str, torch.Tensor]:
    """The trained adapter weights of a peft-wrapped ``model`` keyed from the submodule at
    ``prefix`` (e.g. "transformer"), without adapter names: the layout diffusers'
    ``save_lora_weights`` expects, e.g. ``transformer_blocks.0.attn.to_q.lora_A.weight``. Under
    FSDP2 and ZeRO-3 the sharded adapters are gathered whole: every process calls this."""
    from peft import get_peft_model_state_dict

    from adrpo.flow.sharding import gathered, whole

    head = f"base_model.model.{prefix}."
    with gathered([p for name, p in model.named_parameters() if "lora_" in name]):
        state = {name: whole(value.detach()).cpu().clone() for name, value in get_peft_model_state_dict(model).items()}
    outside = sorted(name for name in state if not name.startswith(head))
    if outside:
        raise ValueError(f"adapter weights outside {prefix!r}: {outside[:3]}")
    return {name.removeprefix(head): value for name, value in state.items()}
