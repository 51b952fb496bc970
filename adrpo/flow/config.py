"""Configuration of the online flow-matching trainer (ADRPO-FM and its baselines).

Defaults follow the paper's text-to-image setup where it states them (β0 = 1, advantage
clip ±β0) and the ORW-CFM reference code otherwise (τ = 0.5, α = 1, Adam lr 2e-4, gradient
clipping at 1.0). Validation errors name the field and the allowed values.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from typing import Any

from adrpo.core.advantages import BASELINES, SCALINGS
from adrpo.core.monitor import POLICIES as MONITOR_POLICIES
from adrpo.core.monitor import Thresholds
from adrpo.errors import ConfigError
from adrpo.settings import from_mapping, monitor_policy

METHODS = ("adrpo", "orw_cfm_w2", "raft", "flow_dpo")


def _help(text: str, default: Any) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": text})
    return field(default=default, metadata={"help": text})


_SCALARS = {"float": float, "int": int, "bool": bool, "str": str}


def _coerce(name: str, value: Any, annotation: str) -> Any:
    """Check ``value`` against a field's annotation, converting what YAML leaves as text.

    YAML 1.1 reads ``1e-3`` (no dot) as a string and ``2`` as an int where a float is
    meant; both are converted. Anything that does not fit is refused by field name.
    """
    optional = annotation.endswith(" | None")
    kind = annotation.removesuffix(" | None")
    if value is None and optional:
        return None
    if kind == "list[str]":
        if isinstance(value, str):
            value = [value]
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return list(value)
    elif kind == "bool":
        if isinstance(value, bool):
            return value
    elif kind == "str | bool":  # a policy name, or the YAML boolean an unquoted off / on reads as
        if isinstance(value, (str, bool)):
            return value
    elif kind in ("int", "float"):
        if isinstance(value, bool):
            raise ConfigError(f"{name} must be {annotation}, got {value!r} (bool)")
        try:
            number = float(value) if isinstance(value, str) else value
            if kind == "int" and isinstance(number, float) and number.is_integer():
                number = int(number)
            if isinstance(number, int) or (kind == "float" and isinstance(number, float)):
                return _SCALARS[kind](number)
        except ValueError:
            pass
    elif isinstance(value, _SCALARS.get(kind, object)):
        return value
    raise ConfigError(f"{name} must be {annotation}, got {value!r} ({type(value).__name__})")


@dataclass
class FlowConfig:
    """Every knob of one online fine-tuning run; see each field's ``help``.

    Groups: method and its hyperparameters; moving reference; batch and sampling;
    optimisation; LoRA; bookkeeping (output, logging, checkpoints).
    """

    # Method
    method: str = _help(f"Training objective, one of {METHODS}.", "adrpo")
    beta0: float = _help("ADRPO base divergence coefficient β0 (paper: 1 for text-to-image).", 1.0)
    adv_clip_min: float | None = _help("A_min of the advantage clip; None means −beta0.", None)
    adv_clip_max: float | None = _help("A_max of the advantage clip; None means +beta0. Above beta0 warns.", None)
    advantage_baseline: str = _help(f"Baseline subtracted from rewards, one of {BASELINES}.", "group")
    advantage_scale: str = _help(f"Divide advantages by the std of the baseline set ('std') or not ('none'), one of {SCALINGS}.", "std")
    orw_tau: float = _help("ORW-CFM-W2 inverse temperature τ of w = exp(τ·r).", 0.5)
    orw_alpha: float = _help("ORW-CFM-W2 fixed W2 coefficient α.", 1.0)
    orw_normalize: bool = _help("Rescale ORW weights to mean 1 over the batch (paper: raw exp(τ·r)).", False)
    raft_fraction: float = _help("RAFT: share of each prompt's samples kept for flow matching.", 0.25)
    dpo_beta: float = _help("Flow-DPO inverse temperature β.", 100.0)

    # Moving reference (TRL's GRPOConfig options, same names and defaults)
    sync_ref_model: bool = _help(
        "Whether to synchronize the reference model with the active model every `ref_model_sync_steps` steps, using the "
        "`ref_model_mixup_alpha` parameter (TR-DPO, arXiv 2404.09656). Every method's reference moves (ADRPO-FM, "
        "ORW-CFM-W2, Flow-DPO; RAFT uses it only for the w2 metric), in full fine-tuning and LoRA mode; the logged and "
        "evaluated w2 is then to the current reference, not to the base model. Logged rows then also carry w2_base, the "
        "same W2 proxy to the base model on the same (x_t, t) as w2 (one more no-grad forward of the step's samples, "
        "at logged steps only), which the collapse monitor's w2_bound reads instead of w2. In full fine-tuning that "
        "costs one more frozen copy of the weights; in LoRA mode none (the base is the policy with adapters disabled).",
        False)
    ref_model_mixup_alpha: float = _help(
        "α parameter from the TR-DPO paper, which controls the mix between the current policy and the previous reference "
        "policy during updates. The reference policy is updated according to the equation: "
        "`π_ref = α * π_θ + (1 - α) * π_ref_prev`. To use this parameter, you must set `sync_ref_model=True`.", 0.6)
    ref_model_sync_steps: int = _help(
        "τ parameter from the TR-DPO paper, which determines how frequently the current policy is synchronized with the "
        "reference policy (after optimizer steps τ, 2τ, ...). To use this parameter, you must set `sync_ref_model=True`.", 512)

    # Batch and sampling
    prompts_per_step: int = _help("B, prompts drawn per step (per process).", 8)
    group_size: int = _help("G, samples drawn per prompt.", 8)
    sampling_steps: int = _help("Euler steps of the sampler during training.", 20)
    guidance_scale: float = _help("Classifier-free guidance weight of the sampler (1 = none).", 1.0)
    time_shift: float | None = _help(
        "Sampler time-grid shift (1 = uniform); None takes the model's own time grid (the SD3 scheduler's sigmas, FLUX's "
        "resolution-dependent exp(mu) shift), uniform for models without one.", None)
    micro_batch_size: int | None = _help(
        "Samples per forward pass (sampling, rewards, loss). A step's chunks accumulate into one optimizer step with "
        "exactly the full batch's gradient, at the cost of one extra no-grad forward; None = the whole step at once.", None)
    sampler_refresh_every: int = _help("K: the sampling policy is a snapshot of the policy refreshed every K steps; 1 is on-policy.", 1)

    # Optimisation
    num_steps: int = _help("Optimizer steps to train for.", 200)
    learning_rate: float = _help("AdamW learning rate.", 2e-4)
    weight_decay: float = _help("AdamW weight decay.", 0.0)
    max_grad_norm: float | None = _help("Gradient-norm clip; None disables it.", 1.0)
    seed: int = _help("Seed of every random draw of the run.", 0)

    gradient_checkpointing: bool = _help("Recompute the transformer's activations in the backward pass (diffusers models).", False)
    fsdp_gather_for_sampling: bool = _help(
        "FSDP2: keep the whole model gathered through each no-grad pass (a sampling pass of sampling_steps Euler steps, "
        "the reference and base velocities over their micro-batches): one all-gather of each sharding unit per pass, "
        "holding one whole copy of the weights meanwhile, as TRL's ds3_gather_for_generation does for generation. False "
        "gathers each unit at every forward and frees it after (sampling_steps all-gathers of the model per sampling "
        "pass), for models whose whole weights do not fit one device. DeepSpeed ZeRO-3 keeps what its own "
        "stage3_max_reuse_distance and stage3_param_persistence_threshold say; other engines hold whole weights anyway.",
        True)

    # LoRA
    lora_rank: int = _help("LoRA rank; 0 trains all parameters and keeps a frozen reference copy.", 0)
    lora_alpha: float = _help("LoRA alpha (scale = alpha / rank).", 16.0)
    lora_target_modules: list[str] = _help("Module names LoRA adapts.", ["proj"])

    # Bookkeeping
    output_dir: str = _help(
        "Run directory of one run: config.json, metrics.jsonl, alarms.jsonl, checkpoints/, TensorBoard logs. A fresh "
        "start refuses one that holds a run (resume it or overwrite it); a resume refuses changed result-changing "
        "settings (adrpo.flow.run_directory).", "runs/flow")
    logging_steps: int = _help("Log metrics every this many steps.", 1)
    checkpoint_steps: int = _help("Save a checkpoint every this many steps (0 = only at the end).", 50)
    keep_checkpoints: int = _help("Complete checkpoints kept on disk.", 2)
    report_to: list[str] = _help("Trackers: 'tensorboard', 'wandb', or 'none'.", ["tensorboard"])
    progress_bar: bool = _help("Show a tqdm progress bar.", True)
    monitor: str | bool = _help(
        f"Training-collapse monitor (adrpo.core.monitor), one of {MONITOR_POLICIES}: 'warn' logs each alarm and records it "
        "in output_dir/alarms.jsonl; 'stop' also saves a checkpoint and ends the run at the first alarm (--resume "
        "continues); 'off' builds no monitor (YAML's unquoted off is False: off; true: warn).", "warn")
    monitor_thresholds: dict[str, float] = _help(
        "Overrides of adrpo.core.monitor.Thresholds, e.g. {diversity_fraction: 0.4, kl_max: null}; null switches a rule off.", {})

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, _coerce(f.name, getattr(self, f.name), f.type))
        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.beta0 < 0:
            raise ConfigError(f"beta0 must be >= 0, got {self.beta0}")
        if self.adv_clip_min is None:
            self.adv_clip_min = -self.beta0
        if self.adv_clip_max is None:
            self.adv_clip_max = self.beta0
        if self.adv_clip_min > self.adv_clip_max:
            raise ConfigError(f"adv_clip_min ({self.adv_clip_min}) must be <= adv_clip_max ({self.adv_clip_max})")
        if self.method == "adrpo" and self.adv_clip_max > self.beta0:
            warnings.warn(
                f"adv_clip_max ({self.adv_clip_max}) > beta0 ({self.beta0}): the coefficient beta0 - A "
                "goes negative for the best samples, pushing them away from the reference",
                stacklevel=3,
            )
        if self.advantage_baseline not in BASELINES:
            raise ConfigError(f"advantage_baseline must be one of {BASELINES}, got {self.advantage_baseline!r}")
        if self.advantage_scale not in SCALINGS:
            raise ConfigError(f"advantage_scale must be one of {SCALINGS}, got {self.advantage_scale!r}")
        for name in ("prompts_per_step", "group_size", "sampling_steps", "sampler_refresh_every", "logging_steps", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.micro_batch_size is not None and self.micro_batch_size < 1:
            raise ConfigError(f"micro_batch_size must be >= 1 or None, got {self.micro_batch_size}")
        for name in ("num_steps", "checkpoint_steps", "lora_rank"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.method == "flow_dpo" and self.group_size < 2:
            raise ConfigError(f"group_size must be >= 2 for flow_dpo (pairs), got {self.group_size}")
        self._refuse_no_op_settings()
        if not 0 < self.raft_fraction <= 1:
            raise ConfigError(f"raft_fraction must be in (0, 1], got {self.raft_fraction}")
        if self.learning_rate <= 0:
            raise ConfigError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.orw_alpha < 0:
            raise ConfigError(f"orw_alpha must be >= 0, got {self.orw_alpha}")
        if not 0 <= self.ref_model_mixup_alpha <= 1:
            raise ConfigError(f"ref_model_mixup_alpha must be in [0, 1], got {self.ref_model_mixup_alpha}")
        if self.ref_model_sync_steps < 1:
            raise ConfigError(f"ref_model_sync_steps must be >= 1, got {self.ref_model_sync_steps}")
        # Collapse monitor
        self.monitor = monitor_policy(self.monitor)  # `monitor: off` in YAML is False
        try:
            Thresholds.from_dict(self.monitor_thresholds)
        except ConfigError as err:
            raise ConfigError(f"monitor_thresholds: {err}") from err

    def _refuse_no_op_settings(self) -> None:
        """Settings under which a method trains nothing, refused by field; surprising ones warn."""
        if self.method == "adrpo" and self.beta0 == 0 and self.adv_clip_min == self.adv_clip_max == 0:
            raise ConfigError(
                "beta0 = 0 with the default advantage clip [-beta0, beta0] = [0, 0] makes the ADRPO-FM loss "
                "identically zero (A = 0 and beta0 - A = 0): set beta0 > 0, or an explicit adv_clip_min/adv_clip_max"
            )
        if self.group_size == 1 and self.advantage_baseline == "group":
            if self.method == "adrpo":
                raise ConfigError(
                    "group_size = 1 with advantage_baseline = 'group': every advantage is zero (each sample is its own "
                    "group's mean), so ADRPO-FM only pulls toward the reference; set group_size >= 2 or "
                    "advantage_baseline = 'batch'"
                )
            if self.method == "raft":
                warnings.warn("group_size = 1: RAFT keeps every sample of a one-sample group, i.e. plain self-training",
                              stacklevel=4)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FlowConfig:
        """Build from a mapping (e.g. parsed YAML), refusing unknown keys by name."""
        return from_mapping(cls, values, "FlowConfig")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
