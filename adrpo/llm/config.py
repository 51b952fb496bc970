"""ADRPOConfig: TRL's GRPOConfig plus only what ADRPO adds.

β0 is TRL's ``beta`` (default here 0.04, the paper's value; TRL's own default is 0). The
advantage that enters the coefficient is ``adv_coef_scale``·A clipped to
[``adv_clip_min``, ``adv_clip_max``] (default ±beta). Note: TRL's default
``scale_rewards="group"`` makes A a z-score (about ±1), so with the paper's ±0.04 clip almost
every sample saturates and the coefficient is nearly binary {0, 2·β0}. ``adv_coef_scale=beta``
maps one standard deviation to the clip edge instead, keeping the coefficient graded.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

from trl import GRPOConfig

from adrpo.errors import ConfigError


@dataclass
class ADRPOConfig(GRPOConfig):
    """GRPOConfig with ``beta`` = β0 and the ADRPO clip range; see the module docstring."""

    beta: float = field(
        default=0.04,
        metadata={"help": "β0, the base KL coefficient; the per-sample coefficient is beta − clip(adv_coef_scale·A)."},
    )
    adv_clip_min: float | None = field(
        default=None, metadata={"help": "A_min of the coefficient's advantage clip; None means −beta."}
    )
    adv_clip_max: float | None = field(
        default=None,
        metadata={"help": "A_max of the coefficient's advantage clip; None means +beta. Above beta warns (negative coefficient)."},
    )
    adv_coef_scale: float = field(
        default=1.0,
        metadata={"help": "Factor on the advantage before it is clipped into the coefficient; 1.0 is the paper's rule."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.beta < 0:
            raise ConfigError(f"beta (β0) must be >= 0, got {self.beta}")
        if self.adv_clip_min is None:
            self.adv_clip_min = -self.beta
        if self.adv_clip_max is None:
            self.adv_clip_max = self.beta
        if self.adv_clip_min > self.adv_clip_max:
            raise ConfigError(f"adv_clip_min ({self.adv_clip_min}) must be <= adv_clip_max ({self.adv_clip_max})")
        if self.adv_coef_scale < 0:
            raise ConfigError(f"adv_coef_scale must be >= 0, got {self.adv_coef_scale}")
        if self.beta == 0 and (self.adv_clip_min, self.adv_clip_max) != (0, 0):
            raise ConfigError(
                "beta (β0) = 0 makes TRL skip the reference model and the KL term, so an adaptive coefficient "
                f"-A with clip [{self.adv_clip_min}, {self.adv_clip_max}] cannot be applied: set beta > 0, or "
                "adv_clip_min = adv_clip_max = 0 (plain GRPO)"
            )
        if self.adv_clip_max > self.beta:
            warnings.warn(
                f"adv_clip_max ({self.adv_clip_max}) > beta ({self.beta}): the coefficient beta - A goes negative "
                "for the best samples, rewarding divergence from the reference",
                stacklevel=3,
            )
