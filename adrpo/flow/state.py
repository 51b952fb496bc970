"""What the flow trainer must remember across a restart, which accelerate checkpoints with the
model and optimizer (:func:`accelerate.Accelerator.register_for_checkpointing`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from adrpo.flow.sharding import copy_whole_rows_, whole_rows


class TrainerState:
    """What the trainer must remember across a restart (accelerate checkpoints it).

    The random generator and the prompt order are per process; before a save the trainer
    gathers every process's into ``gathered`` so that each one resumes its own stream.
    ``reference`` holds the weights a moving reference (``sync_ref_model``) has moved: in full
    fine-tuning the reference copy's own trainable parameters, in LoRA mode the reference
    adapters. Loading copies into those tensors in place, so the reference module sees them.
    Both hold the rows :func:`adrpo.flow.sharding.local` gives of the trainable parameters in
    ``layout``, which says how to gather and scatter them under FSDP2 and ZeRO-3.
    """

    def __init__(self, num_prompts: int, generator: torch.Generator, process_index: int):
        self.step = 0
        self.generator = generator
        self.process_index = process_index
        self.order = self.permutation(num_prompts)
        self.cursor = 0
        self.snapshot: dict[str, torch.Tensor] | None = None
        self.reference: dict[str, torch.Tensor] | None = None
        self.gathered: list[dict[str, Any]] = []
        self.layout: Mapping[str, torch.Tensor] = {}

    def next_prompts(self, prompts: Sequence[str], k: int) -> list[str]:
        """``k`` of ``prompts``, walking a fresh random permutation each epoch."""
        chosen = []
        for _ in range(k):
            if self.cursor == len(self.order):
                self.order = self.permutation(len(prompts))
                self.cursor = 0
            chosen.append(prompts[self.order[self.cursor]])
            self.cursor += 1
        return chosen

    def permutation(self, n: int) -> list[int]:
        """A fresh random order of n prompts (a Python list: no device sync per prompt)."""
        return torch.randperm(n, generator=self.generator, device=self.generator.device).tolist()

    def local_state(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "order": list(self.order), "cursor": self.cursor}

    def state_dict(self) -> dict[str, Any]:
        """Called on every process (accelerate saves the main one's): under FSDP2 and ZeRO-3 the snapshot
        and the moving reference are gathered whole here."""
        return {"step": self.step, "snapshot": self.whole_tensors(self.snapshot), "reference": self.whole_tensors(self.reference),
                "processes": self.gathered or [self.local_state()]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        device = self.generator.device
        mine = state["processes"][self.process_index]
        self.step = state["step"]
        self.generator.set_state(mine["generator"])
        self.order = list(mine["order"])
        self.cursor = mine["cursor"]
        if state["snapshot"] is not None and self.snapshot is not None:
            with torch.no_grad():
                for name, value in state["snapshot"].items():
                    copy_whole_rows_(self.snapshot[name], value, self.layout.get(name, value))
        elif state["snapshot"] is not None:
            self.snapshot = {name: value.to(device) for name, value in state["snapshot"].items()}
        self._load_reference(state.get("reference"))  # absent from checkpoints of before sync_ref_model

    def _load_reference(self, saved: dict[str, torch.Tensor] | None) -> None:
        if (saved is None) != (self.reference is None):
            held = "holds no" if saved is None else "holds a"
            raise ValueError(f"the trainer state {held} moving reference but this run has sync_ref_model="
                             f"{self.reference is not None}; resume with the sync_ref_model it was saved with")
        if saved is None:
            return
        if saved.keys() != self.reference.keys():
            missing, unexpected = sorted(self.reference.keys() - saved.keys()), sorted(saved.keys() - self.reference.keys())
            raise ValueError(f"the saved moving reference does not match the trainable weights (missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]})")
        with torch.no_grad():
            for name, value in saved.items():
                copy_whole_rows_(self.reference[name], value, self.layout.get(name, value))


    def whole_tensors(self, tensors: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
        if tensors is None:
            return None
        return {name: whole_rows(value, self.layout.get(name, value)) for name, value in tensors.items()}
