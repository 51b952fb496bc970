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
clip range collapsed to a constant c the loss and gradients equal stock GRPO with beta = β0 − c.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from trl import GRPOTrainer

from adrpo.core.coefficient import adaptive_coefficient


class PerSampleBeta(float):
    """A float (β0, for TRL's ``beta != 0`` tests) that multiplies a KL tensor per sample.

    Args:
        beta0: the base coefficient, the float's value.
        coefficient: (B, 1) per-completion coefficients β0 − clip(A).
    """

    def __new__(cls, beta0: float, coefficient: torch.Tensor) -> PerSampleBeta:
        value = super().__new__(cls, beta0)
        value.coefficient = coefficient
        return value

    def __mul__(self, other):
        if isinstance(other, torch.Tensor):
            return self.coefficient.to(other.dtype) * other  # (B, 1) * (B, T)
        return float(self) * other

    __rmul__ = __mul__

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        """``tensor * beta`` reaches torch first: multiply by the coefficient there too; any
        other torch use of the value sees the plain float β0."""
        kwargs = kwargs or {}
        per_sample = func in (torch.Tensor.__mul__, torch.Tensor.__rmul__, torch.Tensor.mul, torch.mul)
        args = tuple(
            (a.coefficient.to(args[0].dtype) if per_sample else float(a)) if isinstance(a, cls) else a for a in args
        )
        return func(*args, **kwargs)


class ADRPOTrainer(GRPOTrainer):
    """GRPOTrainer whose KL coefficient is β0 − clip(adv_coef_scale·A) per completion.

    Takes exactly GRPOTrainer's arguments, with ``args`` an :class:`adrpo.llm.config.ADRPOConfig`.
    Logs ``adrpo/coef_mean``, ``adrpo/coef_min``, ``adrpo/coef_max``, ``adrpo/frac_clipped`` and
    ``adrpo/frac_negative`` beside TRL's ``kl`` and ``entropy``.
    """

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
        with self._per_sample_beta(coefficient.unsqueeze(1)):
            return super()._compute_loss(model, inputs)

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
        for key, value in zip(("coef_mean", "frac_clipped", "frac_negative"), means):
            self._metrics[mode][f"adrpo/{key}"].append(value)
        self._metrics[mode]["adrpo/coef_min"].append(low)
        self._metrics[mode]["adrpo/coef_max"].append(high)
