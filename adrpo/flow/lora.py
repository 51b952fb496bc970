"""LoRA through peft: the reference is the base model with adapters disabled, so no second
copy of the weights is held.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

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
