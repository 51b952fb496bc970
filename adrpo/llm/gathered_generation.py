"""TRL's ``ds3_gather_for_generation`` under FSDP2 too, for both LLM trainers.

Under DeepSpeed ZeRO-3, TRL gathers the policy's whole weights once for a generation call (the default,
``ds3_gather_for_generation=True``). Under FSDP2 it generates with the sharded module as it is, and FSDP2
gathers a sharding unit's weights for each forward and frees them after it: one forward per generated token,
so every decoder layer is all-gathered once per token. :class:`GatheredGeneration` keeps every unit gathered
from its first forward to the end of the generation call instead (one whole copy of the weights held
meanwhile, as under ZeRO-3), when ``ds3_gather_for_generation`` is on; off, and with vLLM (which generates
from weights TRL syncs to it), generation is TRL's.
"""

from __future__ import annotations

from typing import Any

from adrpo.fsdp_gathering import no_grad_forwards


class GatheredGeneration:
    """GRPOTrainer mixin: under FSDP2 with ``args.ds3_gather_for_generation``, one all-gather of each sharding
    unit per generation call (transformers' ``generate``) instead of one per generated token."""

    def _generate_single_turn(self, *args: Any, **kwargs: Any) -> Any:
        if self.use_vllm or not (self.args.ds3_gather_for_generation and self.accelerator.is_fsdp2):  # vLLM: no forward here
            return super()._generate_single_turn(*args, **kwargs)
        with no_grad_forwards(self.model, keep_gathered=True):
            return super()._generate_single_turn(*args, **kwargs)
