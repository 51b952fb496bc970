"""The one online loop behind ADRPO-FM and every flow baseline.

Each step: draw B prompts → sample G x1 per prompt from the sampling policy (Euler ODE with
classifier-free guidance) → score them → advantages → draw t and x0, build (x_t, u_t) on the
straight path → policy and reference velocities → the method's per-sample loss → one
optimizer step through accelerate. The method is a row of ``adrpo.flow.methods.LOSSES``.

This module holds the trainer's state, sampling, the reference and one step; the backward pass
of a step is :mod:`adrpo.flow.backward`'s, the loop around the steps (resume, evaluate, log,
callbacks, checkpoint) :mod:`adrpo.flow.loop`'s, the checkpoint files :mod:`adrpo.flow.resume`'s.

Distributed training, mixed precision and trackers come from accelerate: run a script that
builds a :class:`FlowTrainer` under ``accelerate launch``. Each process draws its own whole
prompt groups, so group baselines need no communication; ``advantage_baseline="batch"`` is
per process.

Memory: ``micro_batch_size`` runs sampling, rewards and the loss in chunks whose gradients add
up to exactly the whole step's; ``gradient_checkpointing`` recomputes a diffusers
transformer's activations. Under DeepSpeed the engine's micro-batch size and gradient
clipping are filled from the config.

Resuming: checkpoints hold the model (in LoRA mode its adapter weights only), optimizer,
accelerate's RNG states and the trainer state (step, sampling-policy snapshot, random
generator, prompt order, a moving reference's weights). The initial reference, a LoRA base and
the base copy of a moving reference are *not* saved: build the trainer from the same base model
and call ``train(resume_from_checkpoint=True)``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object, set_seed
from torch import nn

from adrpo.core.advantages import compute_advantages
from adrpo.core.flow_losses import FlowLoss, preference_pairs, squared_error
from adrpo.core.metrics import grouped_diversity
from adrpo.core.paths import StraightPath, shifted_time_grid
from adrpo.errors import ConfigError
from adrpo.flow import checkpointing, engine, loop, resume
from adrpo.flow.backward import loss_and_backward
from adrpo.flow.callbacks import FlowCallback, with_default_monitor
from adrpo.flow.config import FlowConfig
from adrpo.flow.loop import Evaluator
from adrpo.flow.lora import adapters_disabled, add_lora
from adrpo.flow.methods import LOSSES, PAIRED, LossBatch
from adrpo.flow.reference import mix_, moving_weights, swapped
from adrpo.flow.sampler import sample_euler, set_training
from adrpo.flow.sharding import local, refresh, shard_frozen, whole
from adrpo.flow.state import TrainerState
from adrpo.fsdp_gathering import no_grad_forwards
from adrpo.rewards.base import FlowReward, reward_name, validate_rewards

__all__ = ["Embedder", "Evaluator", "FlowTrainer", "set_training"]

Embedder = Callable[[torch.Tensor], torch.Tensor]


class FlowTrainer:
    """Online RL fine-tuning of a velocity model against a reward.

    Args:
        config: the run's :class:`FlowConfig`.
        model: a :class:`adrpo.flow.models.base.VelocityModel`, the initial policy and the
            reference.
        reward_fn: ``(samples (N, *D), prompts) -> (N,)``.
        train_prompts: prompts drawn (without replacement within an epoch) for training.
        diversity_fn: optional ``(N, *D) -> (N, E)`` embedder; its per-prompt mean pairwise
            distance is logged as ``diversity``.
        accelerator: an existing Accelerator; by default one is built (CPU without CUDA).
        callbacks: :class:`FlowCallback` objects. Unless ``config.monitor`` is "off" (or one of
            them already is a :class:`CollapseMonitor`), the collapse monitor is added, built
            from ``config.monitor`` and ``config.monitor_thresholds``, recording to
            ``output_dir/alarms.jsonl``.

    A callback that sets ``should_stop`` ends :meth:`train` after that step's log: a
    checkpoint of the step is saved and ``train`` returns; resuming continues from it.

    Like transformers' Trainer, construction seeds Python, NumPy and torch globally
    (``accelerate.utils.set_seed(config.seed)``), so LoRA initialisation is reproducible.

    With ``config.sync_ref_model`` the reference moves (:mod:`adrpo.flow.reference`); then
    :meth:`reference_velocity` and every logged or evaluated ``w2`` are to the current reference,
    and the logged rows also carry ``w2_base``, the same proxy to the base model
    (:meth:`base_velocity`), which the collapse monitor's ``w2_bound`` reads instead of ``w2``.
    With a fixed reference the reference is the base, ``w2`` is that divergence, and no
    ``w2_base`` is logged.
    """

    def __init__(
        self,
        config: FlowConfig,
        model: nn.Module,
        reward_fn: FlowReward,
        train_prompts: Sequence[str],
        *,
        diversity_fn: Embedder | None = None,
        accelerator: Accelerator | None = None,
        callbacks: Sequence[FlowCallback] = (),
    ):
        if not train_prompts:
            raise ConfigError("train_prompts is empty")
        self.config = config
        self.reward_fn = reward_fn
        self.reward_label = reward_name(reward_fn)
        self.train_prompts = list(train_prompts)
        self.diversity_fn = diversity_fn
        self.path = StraightPath()
        self.loss_fn = LOSSES[config.method]
        self.output_dir = Path(config.output_dir)
        trackers = [name for name in config.report_to if name != "none"]
        self.accelerator = accelerator or engine.default_accelerator(trackers, self.output_dir)
        engine.check_engine(self.accelerator)
        set_seed(config.seed)
        model.requires_grad_(True)
        if config.gradient_checkpointing:
            engine.enable_gradient_checkpointing(model)
        if config.lora_rank:
            model = add_lora(model, rank=config.lora_rank, alpha=config.lora_alpha, target_modules=config.lora_target_modules)
            self.reference: nn.Module | None = None
        else:
            self.reference = copy.deepcopy(model).requires_grad_(False).eval().to(self.accelerator.device)
        # w2_base's base once the reference moves away from it: in full fine-tuning a second frozen copy
        # (LoRA mode: the policy with its adapters disabled, no copy). Copying draws no random number.
        full_copy = config.sync_ref_model and self.reference is not None
        self.base: nn.Module | None = copy.deepcopy(self.reference) if full_copy else None
        params = [p for p in model.parameters() if p.requires_grad]
        engine.check_trainable_precision(params, self.accelerator, lora_rank=config.lora_rank)
        optimizer = engine.adamw(params, config)
        engine.configure_deepspeed(self.accelerator, config)
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        if self.reference is not None:  # FSDP2: the frozen copies sharded as the policy is
            self.reference = shard_frozen(self.accelerator, self.reference)
        if self.base is not None:
            self.base = shard_frozen(self.accelerator, self.base)
        self.calls = engine.step_calls(self.accelerator, self.optimizer)
        self.policy = engine.unwrap(self.accelerator, self.model)
        self.trainable = {name: p for name, p in self.policy.named_parameters() if p.requires_grad}
        generator = torch.Generator(device=self.accelerator.device)
        generator.manual_seed(config.seed * 1_000_003 + self.accelerator.process_index)
        self.state = TrainerState(len(self.train_prompts), generator, self.accelerator.process_index)
        if config.sampler_refresh_every > 1:
            self.state.snapshot = {name: local(p).clone() for name, p in self.trainable.items()}
        if config.sync_ref_model:
            self.state.reference = moving_weights(self.trainable, self.reference)
        self.state.layout = self.trainable
        self.accelerator.register_for_checkpointing(self.state)
        if config.lora_rank:
            checkpointing.save_only_trainable(self.accelerator, self.model)
        self.metrics_log = checkpointing.MetricsLog(self.output_dir / "metrics.jsonl")
        self.checkpoint_root = self.output_dir / "checkpoints"
        self.accelerator.init_trackers("adrpo", config={k: str(v) if isinstance(v, (list, dict)) else v for k, v in config.to_dict().items()})
        self.callbacks = with_default_monitor(callbacks, config)
        self.should_stop = False

    # ----------------------------------------------------------------- sampling
    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    def chunks(self, n: int) -> list[slice]:
        """Consecutive slices of at most ``micro_batch_size`` covering range(n)."""
        size = self.config.micro_batch_size or n
        return [slice(start, min(start + size, n)) for start in range(0, n, size)]

    def in_chunks(self, fn: Callable[[slice], torch.Tensor], n: int) -> torch.Tensor:
        """``fn`` over :meth:`chunks` of range(n), concatenated (no copy for a single chunk)."""
        parts = [fn(s) for s in self.chunks(n)]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _randn(self, n: int) -> torch.Tensor:
        return torch.randn((n, *self.policy.data_shape), generator=self.state.generator, device=self.device)

    def _sampling_weights(self) -> AbstractContextManager:
        """Swap the sampling-policy snapshot into the policy's parameters (no copy)."""
        return nullcontext() if self.state.snapshot is None else swapped(self.trainable, self.state.snapshot)

    def reference_context(self) -> AbstractContextManager:
        """Inside this block ``self.policy`` computes the reference velocity (LoRA mode: the
        base with adapters disabled, or with ``sync_ref_model`` the reference adapters swapped in)."""
        if self.reference is not None:
            return nullcontext()
        return adapters_disabled(self.policy) if self.state.reference is None else swapped(self.trainable, self.state.reference)

    def _no_grad_forwards(self, net: nn.Module) -> AbstractContextManager:
        """Forwards of ``net`` without a backward inside the block (see :func:`adrpo.fsdp_gathering.no_grad_forwards`)."""
        return no_grad_forwards(net, keep_gathered=self.config.fsdp_gather_for_sampling)

    @torch.no_grad()
    def policy_velocity(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """v_θ(x_t, t, c): (N, *D) -> (N, *D), in micro-batches, without gradient."""
        with self._no_grad_forwards(self.policy):
            return self.in_chunks(lambda s: self.policy(x_t[s], t[s], cond[s]), len(x_t))

    @torch.no_grad()
    def reference_velocity(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """v_ref(x_t, t, c): (N, *D) -> (N, *D), in micro-batches; the current (moving) reference."""
        net = self.policy if self.reference is None else self.reference
        with self.reference_context(), self._no_grad_forwards(net):
            return self.in_chunks(lambda s: net(x_t[s], t[s], cond[s]), len(x_t))

    @torch.no_grad()
    def base_velocity(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """v_base(x_t, t, c) of the base model the run started from: (N, *D) -> (N, *D), in
        micro-batches. With a fixed reference that is :meth:`reference_velocity`; with
        ``sync_ref_model`` the frozen base copy (full fine-tuning) or the policy with its adapters
        disabled (LoRA mode)."""
        if self.state.reference is None:
            return self.reference_velocity(x_t, t, cond)
        net, context = self._base_network()
        with context, self._no_grad_forwards(net):
            return self.in_chunks(lambda s: net(x_t[s], t[s], cond[s]), len(x_t))

    def _base_network(self) -> tuple[nn.Module, AbstractContextManager]:
        """The module computing the base model under ``sync_ref_model`` and the block to call it in (see base_velocity)."""
        if self.base is not None:
            return self.base, nullcontext()
        return self.policy, adapters_disabled(self.policy)

    @torch.no_grad()
    def sample(
        self,
        prompts: Sequence[str],
        *,
        x0: torch.Tensor | None = None,
        num_steps: int | None = None,
        guidance_scale: float | None = None,
        use_reference: bool = False,
        use_base: bool = False,
    ) -> torch.Tensor:
        """Samples x1 (N, *D) of the current policy, the (current) reference or the base model the run
        started from for N prompts; the base is the reference unless the reference moves (``sync_ref_model``)."""
        cond = self.policy.encode_prompts(prompts)
        x0 = self._randn(len(prompts)) if x0 is None else x0.to(self.device)
        return self._sample(cond, x0, num_steps=num_steps, guidance_scale=guidance_scale, use_reference=use_reference,
                            use_base=use_base)

    def _sample(
        self, cond: torch.Tensor, x0: torch.Tensor, *, num_steps: int | None = None,
        guidance_scale: float | None = None, use_reference: bool = False, use_base: bool = False,
    ) -> torch.Tensor:
        model = self.policy
        was_training = model.training
        set_training(model, False)
        if use_base and self.state.reference is not None:
            net, context = self._base_network()
        elif use_reference or use_base:
            net, context = self.reference if self.reference is not None else model, self.reference_context()
        else:
            net, context = model, nullcontext()
        num_steps = num_steps or self.config.sampling_steps
        settings = dict(
            num_steps=num_steps,
            guidance_scale=self.config.guidance_scale if guidance_scale is None else guidance_scale,
            grid=self.time_grid(num_steps),
        )
        try:
            with context, self._no_grad_forwards(net):
                return self.in_chunks(lambda s: sample_euler(net, cond[s], x0[s], **settings), len(x0))
        finally:  # a sampling error must not leave the policy in evaluation mode
            set_training(model, was_training)

    def time_grid(self, num_steps: int) -> torch.Tensor:
        """(num_steps + 1,) sampling times: shifted by the config's ``time_shift`` when set, else
        the model's own ``time_grid`` (a diffusers scheduler's), else uniform."""
        if self.config.time_shift is not None:
            return shifted_time_grid(num_steps, shift=self.config.time_shift)
        own = getattr(self.policy, "time_grid", None)
        return own(num_steps) if own is not None else shifted_time_grid(num_steps)

    # ----------------------------------------------------------------- training
    def step(self, *, divergence_to_base: bool = True) -> dict[str, float]:
        """One online step; returns its metrics (floats).

        With a moving reference and ``divergence_to_base``, the metrics include ``w2_base``: the W2
        proxy mean ‖v_θ − v_base‖² on the same (x_t, t) as ``w2``, one more no-grad forward of N
        samples through the base (:meth:`base_velocity`). The training loop asks for it only at the
        steps whose row it logs; it changes no weight and draws no random number.
        """
        cfg = self.config
        group = cfg.group_size
        distinct = self.state.next_prompts(self.train_prompts, self.config.prompts_per_step)
        prompts = [p for p in distinct for _ in range(group)]  # N = B·G, prompt-major
        n = len(prompts)
        cond = self.policy.encode_prompts(distinct).repeat_interleave(group, dim=0)  # (B, ...) -> (N, ...)
        with torch.no_grad(), self._sampling_weights():
            x1 = self._sample(cond, self._randn(n))
        rewards = self.in_chunks(lambda s: self.score(x1[s], prompts[s], first_index=s.start), n)
        advantages = compute_advantages(rewards, group_size=group, baseline=cfg.advantage_baseline, scale=cfg.advantage_scale)

        t = torch.rand(n, generator=self.state.generator, device=self.device)
        x0 = self._randn(n)
        pairs = None
        if cfg.method in PAIRED:
            pairs = preference_pairs(rewards, group_size=group)
            t[pairs[1]], x0[pairs[1]] = t[pairs[0]], x0[pairs[0]]
        x_t, u_t = self.path.sample(x0, x1, t)
        v_ref = self.reference_velocity(x_t, t, cond)
        loss, out, v = self._loss_and_backward(
            x_t, t, cond, lambda velocity: LossBatch(velocity, u_t, v_ref, rewards, advantages, group, pairs)
        )
        grad_norm = None if cfg.max_grad_norm is None else self.calls.clip_grad_norm_(list(self.trainable.values()), cfg.max_grad_norm)
        self.calls.optimizer.step()
        self.calls.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1
        self._follow_policy()

        scalars = {
            "loss": loss,
            "reward_mean": rewards.mean(),
            "reward_std": rewards.std(correction=0),
            **out.diagnostics,
        }
        if "w2" not in scalars:
            scalars["w2"] = squared_error(v, v_ref).mean()
        if divergence_to_base and self.state.reference is not None:
            scalars["w2_base"] = squared_error(v, self.base_velocity(x_t, t, cond)).mean()
        if grad_norm is not None:
            scalars["grad_norm"] = whole(grad_norm)  # FSDP2: a replicated DTensor
        if self.diversity_fn is not None:
            embeddings = self.in_chunks(lambda s: self.diversity_fn(x1[s]), n)
            scalars["diversity"] = grouped_diversity(embeddings, group_size=group).mean()
        # as_tensor (~2 µs) only for plain numbers; reward_mean is float32, so .float() rounds each value once as before
        values = torch.stack([x if isinstance(x, torch.Tensor) else torch.as_tensor(x, device=self.device) for x in scalars.values()])
        return dict(zip(scalars, values.float().tolist()))  # one device sync for all metrics

    @torch.no_grad()
    def _follow_policy(self) -> None:
        """After optimizer step ``state.step``: refresh the sampling snapshot and move the reference when due."""
        cfg, step = self.config, self.state.step
        if self.state.snapshot is not None and step % cfg.sampler_refresh_every == 0:
            for name, param in self.trainable.items():
                self.state.snapshot[name].copy_(local(param))
        if self.state.reference is not None and step % cfg.ref_model_sync_steps == 0:  # TRL's SyncRefModelCallback
            mix_(self.state.reference, {name: local(p) for name, p in self.trainable.items()}, alpha=cfg.ref_model_mixup_alpha)
            if self.reference is not None:  # ZeRO-3: the reference's rows moved under its gathered copies
                refresh(self.reference.parameters())

    def score(self, samples: torch.Tensor, prompts: Sequence[str], *, first_index: int = 0) -> torch.Tensor:
        """The checked rewards (N,) of samples (N, *D) for the step being taken."""
        value = self.reward_fn(samples, prompts)
        return validate_rewards(
            value, prompts=prompts, method=self.config.method, step=self.state.step + 1, reward=self.reward_label, first_index=first_index,
        ).to(self.device)

    def _loss_and_backward(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, make_batch: Callable[[torch.Tensor], LossBatch],
    ) -> tuple[torch.Tensor, FlowLoss, torch.Tensor]:
        """Back-propagate the method's mean loss over the N samples in :meth:`chunks`; returns the
        detached loss, the loss output (diagnostics) and the detached policy velocity (N, *D).
        See :func:`adrpo.flow.backward.loss_and_backward`."""
        chunks = self.chunks(len(x_t))
        return loss_and_backward(self.accelerator, self.model, self.loss_fn, self.config, chunks, x_t, t, cond, make_batch)

    def train(
        self,
        *,
        resume_from_checkpoint: bool | str = False,
        overwrite: bool = False,
        allow_config_changes: Sequence[str] = (),
        evaluator: Evaluator | None = None,
        eval_steps: int = 0,
    ) -> list[dict[str, float]]:
        """Train to ``config.num_steps``; returns the rows written to ``metrics.jsonl``.

        One run per ``output_dir`` (:mod:`adrpo.flow.run_directory`): a fresh start refuses a
        directory that already holds a run unless ``overwrite``, and every start saves the
        configuration to ``output_dir/config.json``.

        When a callback sets ``should_stop`` (the collapse monitor under ``monitor: stop``),
        training ends after that step: its checkpoint is saved and the rows so far are returned.

        Args:
            resume_from_checkpoint: True resumes from the newest checkpoint under
                ``output_dir/checkpoints`` (a fresh start when there is none); a path resumes
                from that checkpoint. A resume refuses settings that change the result and
                differ from ``config.json`` (``num_steps`` may grow), naming each field.
            overwrite: start afresh in a directory that holds a run, deleting its run files
                (config, metrics, alarms, checkpoints) first; excludes ``resume_from_checkpoint``.
            allow_config_changes: FlowConfig fields a resume may change anyway (with a warning).
            evaluator: called before training, every ``eval_steps`` steps and at the end;
                its metrics are logged with an ``eval/`` prefix.
        """
        return loop.train(self, resume_from_checkpoint=resume_from_checkpoint, overwrite=overwrite,
                          allow_config_changes=allow_config_changes, evaluator=evaluator, eval_steps=eval_steps)

    # ----------------------------------------------------------------- checkpoints
    def save_checkpoint(self) -> Path:
        """Write ``checkpoints/step-NNNNNNNN`` atomically (every process takes part) and prune."""
        self.state.gathered = gather_object([self.state.local_state()])
        return resume.save(self.accelerator, self.checkpoint_root, self.state.step, keep=self.config.keep_checkpoints)

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore weights, optimizer, RNG states and trainer state from a checkpoint
        directory (``metrics.jsonl`` is left alone). A checkpoint that fails to load raises a
        ConfigError naming it and the file; the trainer may then hold part of its state."""
        resume.load(self.accelerator, Path(path))
        refresh(self.reference.parameters() if self.reference is not None else ())  # ZeRO-3: the moving reference's rows loaded
