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
reference only; ADRPOTrainer then also logs ``kl_base``, the same estimator against a frozen copy of the base, as
fixed-β GRPO does (:mod:`adrpo.llm.base_kl`, in both through :class:`adrpo.llm.audio.AudioGRPOTrainer`).
A run stopped after a checkpoint resumes exactly (:mod:`adrpo.llm.resume`).

Under DeepSpeed ZeRO-3 and FSDP2 nothing here changes: TRL shards the reference and gathers the policy for
generation; what sharding asks of the overrides is in :mod:`adrpo.llm.audio`. tests/test_llm_sharded.py runs
both engines on two CPU processes against one.
"""

from __future__ import annotations

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
    """

    def __new__(cls, beta0: float, coefficient: torch.Tensor) -> PerSampleBeta:
        """The float ``beta0`` carrying ``coefficient``.

        Args:
            beta0: the base coefficient, the float's value.
            coefficient: (B, 1) per-completion coefficients β0 − clip(A).
        """
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
    :class:`adrpo.llm.audio.AudioGRPOTrainer` (stock TRL on text and image batches), so audio rows train too, a
    resumed run continues exactly (:class:`adrpo.llm.resume.ExactResume`), and with ``sync_ref_model`` it logs
    ``kl_base``, the KL to the base model, as fixed-β GRPO does (:class:`adrpo.llm.base_kl.KLToBase`).
    Logs ``adrpo/coef_mean``, ``adrpo/coef_min``, ``adrpo/coef_max``, ``adrpo/frac_clipped`` and
    ``adrpo/frac_negative`` beside TRL's ``kl`` and ``entropy``: min and max over every completion
    of the logging interval on every process, the others means over them.
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
        metrics = self._metrics[mode]
        for key, value in zip(("coef_mean", "frac_clipped", "frac_negative"), means):
            metrics[f"adrpo/{key}"].append(value)  # equal-sized micro-batches: TRL's average is the interval's mean
        # TRL's log averages each list over the logging interval; a one-element running extreme
        # makes that average the extreme over every micro-batch (and process) of the interval.
        metrics["adrpo/coef_min"] = [min([*metrics["adrpo/coef_min"], low])]
        metrics["adrpo/coef_max"] = [max([*metrics["adrpo/coef_max"], high])]
