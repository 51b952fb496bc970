"""``kl_base``: the KL to the base model, logged beside TRL's ``kl`` when the reference moves.

With ``sync_ref_model`` (TRL's moving reference, ``ref ← α·policy + (1 − α)·ref`` every ``ref_model_sync_steps``)
TRL's ``kl`` measures the divergence from the current reference only, which follows the policy: a run drifting
away from the base can log a small ``kl`` throughout. :class:`KLToBase` then also logs ``kl_base``
(``eval_kl_base`` in TRL's evaluation), TRL's estimator against a frozen copy of the base, which the collapse
monitor's KL bound reads in its place (:mod:`adrpo.core.monitor`). Without ``sync_ref_model`` the reference is
the base, TRL's ``kl`` is already the drift, and nothing is added: no copy, no extra forward, and the overrides
only call the next class (tests/test_audio.py's parity with stock TRL covers them).

Both trainers carry it: :class:`adrpo.llm.audio.AudioGRPOTrainer` (fixed β, ``trainer: grpo``) and
:class:`adrpo.llm.trainer.ADRPOTrainer`, which derives from it. Not under DeepSpeed or FSDP, whose reference is
sharded (a warning says so). The held-out evaluations of the miniatures (:mod:`adrpo.tasks.arithmetic`,
:mod:`adrpo.tasks.audio_qa`) measure their ``kl`` against the base loaded from its folder, so they agree with
``kl_base``, but only every N steps.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch


class KLToBase:
    """Mix into a GRPOTrainer subclass (before it and any override of ``_get_per_token_logps_and_entropies`` in the
    bases) to log ``kl_base`` under ``sync_ref_model``; see the module docstring.

    Overrides ``_compute_loss`` (wrapped: logs ``kl_base`` after TRL's loss) and
    ``_get_per_token_logps_and_entropies`` (wrapped: the policy's forward inside the loss also scores the base).
    Measuring never changes training: the weights equal a run without the frozen copy, bit for bit
    (tests/test_kl_base.py).
    """

    base_model: torch.nn.Module | None = None  # the frozen base, only with sync_ref_model
    _base_scores: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # filled while _compute_loss runs

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if self.args.sync_ref_model:
            self.base_model = self._frozen_base()

    def _frozen_base(self) -> torch.nn.Module | None:
        """A frozen copy of TRL's reference taken before its first sync, i.e. the base model (also on a resume:
        TRL rebuilds the reference from the model's path, and the checkpoint's reference is loaded later)."""
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            warnings.warn("kl_base is not logged under DeepSpeed or FSDP (the reference is sharded there)", stacklevel=3)
            return None
        base = copy.deepcopy(self.accelerator.unwrap_model(self.ref_model)).eval()
        return base.requires_grad_(False)

    def _compute_loss(self, model, inputs):
        if self.base_model is None:
            return super()._compute_loss(model, inputs)
        self._base_scores = []
        try:
            loss = super()._compute_loss(model, inputs)
            (logps, base_logps), = self._base_scores
        finally:
            self._base_scores = None
        self._log_kl_base(inputs, logps, base_logps)
        return loss

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, *args, **kwargs):
        """The next class's function; inside ``_compute_loss`` with a frozen base, its first call (the policy's
        forward) also scores the same rows with the base, under ``no_grad``, into ``_base_scores``.

        Why here: the policy's log-probs of the batch exist only inside TRL's ``_compute_loss``, and this is the
        call that makes them, with the batch's multimodal inputs bound (the audio features too, since this mixin
        comes before :class:`adrpo.llm.audio.AudioPath`). The cost is what measuring against the base on every
        training row needs at least: one frozen copy (the memory of one more reference, allocated only with
        ``sync_ref_model``) and a no-grad forward of each micro-batch, the rows TRL's reference forward scores once
        per generation (scored ``num_iterations`` times here when that is > 1)."""
        out = super()._get_per_token_logps_and_entropies(model, input_ids, attention_mask, logits_to_keep, *args, **kwargs)
        if self._base_scores is not None and not self._base_scores:
            with torch.no_grad():
                base_logps, _, _ = super()._get_per_token_logps_and_entropies(
                    self.base_model, input_ids, attention_mask, logits_to_keep, *args,
                    **{**kwargs, "compute_entropy": False, "compute_aux_loss": False})
            self._base_scores.append((out[0].detach(), base_logps))
        return out

    def _log_kl_base(self, inputs: dict[str, Any], logps: torch.Tensor, base_logps: torch.Tensor) -> None:
        """``kl_base``: TRL's ``kl`` estimator with the base in place of the reference, so that the two are equal
        until the reference first moves. Per token k3 = exp(Δ) − Δ − 1, Δ = log π_base − log π (B, T), times the
        importance ratio π/π_old when ``use_bias_correction_kl``; the masked mean over tokens of every process."""
        mask = inputs["completion_mask"] if "tool_mask" not in inputs else inputs["completion_mask"] * inputs["tool_mask"]  # (B, T)
        delta = base_logps - logps
        per_token = torch.exp(delta) - delta - 1  # (B, T)
        if self.args.use_bias_correction_kl:
            old = inputs.get("old_per_token_logps")
            log_ratio = logps - (logps if old is None else old)  # (B, T)
            if self.importance_sampling_level == "sequence":
                log_ratio = ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)  # (B, 1)
            per_token = per_token * torch.exp(log_ratio)
        totals = self.accelerator.reduce(torch.stack([(per_token * mask).sum(), mask.sum().float()]), reduction="sum")
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["kl_base"].append((totals[0] / totals[1].clamp(min=1.0)).item())
