"""ADRPOTrainer: TRL's GRPOTrainer with the per-sample KL coefficient β0 − clip(A) (paper Eq. 7).

TRL adds the KL term as ``per_token_loss + self.beta * per_token_kl`` inside the private
``GRPOTrainer._compute_loss`` and only ever tests ``self.beta`` against 0. ADRPOTrainer
therefore overrides nothing but ``_compute_loss``, and only to wrap it: for the duration of
the call ``self.beta`` is a :class:`PerSampleBeta`, a float equal to β0 whose product with the
(B, T) KL tensor uses the (B, 1) coefficient of each completion. Generation, rewards,
advantages (gathered across processes), every ``loss_type``, the reference model or the
disabled PEFT adapter, importance sampling, vLLM and DeepSpeed/FSDP stay TRL's.

Because this relies on a private method, the supported TRL versions are pinned in the
package metadata, and tests/test_llm_parity.py checks, for every ``loss_type``, that with the
clip range collapsed to a constant c the loss and gradients equal stock GRPO with beta = β0 − c,
and that with coefficients differing per completion they equal stock GRPO run on each completion
alone with beta set to its own coefficient.

With ``sync_ref_model`` (TRL's moving reference) TRL's ``kl`` measures the divergence from the current
reference only. ADRPOTrainer then also logs ``kl_base`` (``eval_kl_base`` in TRL's evaluation), the same
estimator against a frozen copy of the base: see :meth:`ADRPOTrainer._get_per_token_logps_and_entropies`.
A run stopped after a checkpoint resumes exactly (:mod:`adrpo.llm.resume`).

Under DeepSpeed ZeRO-3 and FSDP2 nothing here changes: TRL shards the reference and gathers the policy for
generation; what sharding asks of the overrides is in :mod:`adrpo.llm.audio`. tests/test_llm_sharded.py runs
both engines on two CPU processes against one.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from adrpo.core.coefficient import adaptive_coefficient
from adrpo.llm.audio import AudioGRPOTrainer


class PerSampleBeta(float):
    """A float (β0, for TRL's ``beta != 0`` tests) that multiplies a KL tensor per sample.

    ``beta * kl``, ``kl * beta``, ``torch.mul(beta, kl)``, ``kl.mul(beta)`` and ``kl *= beta``
    scale row b of the (B, ...) tensor by ``coefficient[b]``; Python arithmetic with numbers sees
    the plain float β0. Anything else is refused rather than silently using β0 for every row: a
    product with a tensor whose leading dimension is not B (a KL already reduced over the
    completions) raises ``ValueError``, any other torch function ``NotImplementedError``.

    Args:
        beta0: the base coefficient, the float's value.
        coefficient: (B, 1) per-completion coefficients β0 − clip(A).
    """

    def __new__(cls, beta0: float, coefficient: torch.Tensor) -> PerSampleBeta:
        value = super().__new__(cls, beta0)
        value.coefficient = coefficient
        return value

    def rows_of(self, other: torch.Tensor) -> torch.Tensor:
        """The coefficient shaped (B, 1, ..., 1) to scale each row of ``other`` (B, ...)."""
        n = self.coefficient.shape[0]
        if other.dim() == 0 or other.shape[0] != n:
            raise ValueError(
                f"PerSampleBeta holds one KL coefficient per completion, shape {tuple(self.coefficient.shape)}, "
                f"but was multiplied by a tensor of shape {tuple(other.shape)}: TRL's KL term is no longer "
                f"per-completion (expected leading dimension B = {n}), so ADRPOTrainer cannot apply beta0 - clip(A) "
                "row by row with this TRL version"
            )
        return self.coefficient.to(other.dtype).reshape(n, *[1] * (other.dim() - 1))

    def __mul__(self, other):
        if isinstance(other, torch.Tensor):
            return self.rows_of(other) * other
        return float(self) * other

    __rmul__ = __mul__

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        """``tensor * beta``, ``torch.mul(beta, tensor)`` and their in-place forms reach torch first:
        multiply by the coefficient there too."""
        kwargs = kwargs or {}
        operands = [*args, *(v for k, v in kwargs.items() if k != "out")]
        tensor = next((a for a in operands if isinstance(a, torch.Tensor)), None)
        if func not in _PRODUCTS or tensor is None:
            # NotImplementedError, not TypeError: torch turns a TypeError of an operator into NotImplemented
            raise NotImplementedError(
                f"PerSampleBeta (one KL coefficient per completion) can only multiply a (B, ...) tensor; "
                f"torch's {getattr(func, '__name__', func)} cannot use it per sample: TRL's use of beta has changed"
            )

        def per_sample(a):
            return a.rows_of(tensor) if isinstance(a, cls) else a

        return func(*map(per_sample, args), **{k: per_sample(v) for k, v in kwargs.items()})


_PRODUCTS = frozenset({
    torch.mul, torch.multiply, torch.Tensor.mul, torch.Tensor.multiply, torch.Tensor.__mul__, torch.Tensor.__rmul__,
    torch.Tensor.mul_, torch.Tensor.multiply_, torch.Tensor.__imul__,
})


class ADRPOTrainer(AudioGRPOTrainer):
    """GRPOTrainer whose KL coefficient is β0 − clip(adv_coef_scale·A) per completion.

    Takes exactly GRPOTrainer's arguments, with ``args`` an :class:`adrpo.llm.config.ADRPOConfig`. Derives from
    :class:`adrpo.llm.audio.AudioGRPOTrainer` (stock TRL on text and image batches), so audio rows train too and a
    resumed run continues exactly (:class:`adrpo.llm.resume.ExactResume`).
    Logs ``adrpo/coef_mean``, ``adrpo/coef_min``, ``adrpo/coef_max``, ``adrpo/frac_clipped`` and
    ``adrpo/frac_negative`` beside TRL's ``kl`` and ``entropy``: min and max over every completion
    of the logging interval on every process, the others means over them. With ``sync_ref_model`` also
    ``kl_base``, the KL to the base model (TRL's ``kl`` is then the KL to the moving reference).
    """

    base_model: torch.nn.Module | None = None  # the frozen base, only with sync_ref_model
    _base_scores: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # filled while _compute_loss runs

    def __init__(self, *args, **kwargs):
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
        if self.beta == 0.0:  # β0 = 0 with a zero clip range: plain GRPO
            return super()._compute_loss(model, inputs)
        args = self.args
        advantages = inputs["advantages"]
        per_completion = advantages if advantages.dim() == 1 else advantages.mean(dim=1)  # (B,)
        coefficient, _, diagnostics = adaptive_coefficient(
            args.adv_coef_scale * per_completion, beta0=self.beta, a_min=args.adv_clip_min, a_max=args.adv_clip_max
        )
        self._log_coefficient(diagnostics)
        if self.base_model is None:
            with self._per_sample_beta(coefficient.unsqueeze(1)):
                return super()._compute_loss(model, inputs)
        self._base_scores = []
        try:
            with self._per_sample_beta(coefficient.unsqueeze(1)):
                loss = super()._compute_loss(model, inputs)
            (logps, base_logps), = self._base_scores
        finally:
            self._base_scores = None
        self._log_kl_base(inputs, logps, base_logps)
        return loss

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, *args, **kwargs):
        """TRL's function (with the audio path); inside ``_compute_loss`` with a frozen base, its first call (the
        policy's forward) also scores the same rows with the base, under ``no_grad``, into ``_base_scores``.

        Why here: the policy's log-probs of the batch exist only inside TRL's ``_compute_loss``, and this is the
        call that makes them, with the batch's multimodal inputs bound. The cost is what measuring against the base
        on every training row needs at least: one frozen copy (the memory of one more reference, allocated only with
        ``sync_ref_model``) and a no-grad forward of each micro-batch, the rows TRL's reference forward scores once
        per generation (scored ``num_iterations`` times here when that is > 1). The held-out
        evaluations of the miniatures (:mod:`adrpo.tasks.arithmetic`, :mod:`adrpo.tasks.audio_qa`) already measure
        their ``kl`` against the base model loaded from its folder, never synced, but only every N steps."""
        out = super()._get_per_token_logps_and_entropies(model, input_ids, attention_mask, logits_to_keep, *args, **kwargs)
        if self._base_scores is not None and not self._base_scores:
            with torch.no_grad():
                base_logps, _, _ = super()._get_per_token_logps_and_entropies(
                    self.base_model, input_ids, attention_mask, logits_to_keep, *args,
                    **{**kwargs, "compute_entropy": False, "compute_aux_loss": False})
            self._base_scores.append((out[0].detach(), base_logps))
        return out

    def _log_kl_base(self, inputs, logps: torch.Tensor, base_logps: torch.Tensor) -> None:
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

    @contextmanager
    def _per_sample_beta(self, coefficient: torch.Tensor) -> Iterator[None]:
        beta0 = self.beta
        self.beta = PerSampleBeta(beta0, coefficient)
        try:
            yield
        finally:
            self.beta = beta0

    def _log_coefficient(self, diagnostics: dict[str, torch.Tensor]) -> None:
        mode = "train" if self.model.training else "eval"
        stacked = torch.stack([diagnostics[k] for k in ("coef_mean", "frac_clipped", "frac_negative")])
        means = self.accelerator.reduce(stacked, reduction="mean").tolist()
        low = self.accelerator.gather(diagnostics["coef_min"].reshape(1)).min().item()
        high = self.accelerator.gather(diagnostics["coef_max"].reshape(1)).max().item()
        metrics = self._metrics[mode]
        for key, value in zip(("coef_mean", "frac_clipped", "frac_negative"), means):
            metrics[f"adrpo/{key}"].append(value)  # equal-sized micro-batches: TRL's average is the interval's mean
        # TRL's log averages each list over the logging interval; a one-element running extreme
        # makes that average the extreme over every micro-batch (and process) of the interval.
        metrics["adrpo/coef_min"] = [min([*metrics["adrpo/coef_min"], low])]
        metrics["adrpo/coef_max"] = [max([*metrics["adrpo/coef_max"], high])]
