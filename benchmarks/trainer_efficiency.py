"""Overhead of a full ADRPO-FM training step over the compute it cannot avoid.

What is measured, in one process and on the same trainer:

- **full step**: ``FlowTrainer.step()`` with ``method="adrpo"``;
- **(a) sampling**: ``adrpo.flow.sampler.sample_euler`` on the trainer's policy for the
  same N = prompts_per_step·group_size, Euler steps, guidance and time shift, with the
  conditioning and noise prepared beforehand;
- **(b) policy update**: forward of a copy of the policy at (x_t, t, cond) of size N, the
  ADRPO-FM-shaped loss mean(A·‖v − u‖² + (β0 − A)·‖v − v_ref‖²), backward, and one step
  of a plain ``torch.optim.AdamW`` with the trainer's lr and weight decay;
- **(c) reference**: ``trainer.reference_velocity(x_t, t, cond)`` of size N.

The unavoidable compute is median(a) + median(b) + median(c); everything else a step does
(prompt encoding, reward, advantages, gradient clipping, metrics, accelerate's wrappers)
is overhead. Target: full step / unavoidable ≤ 1.10.

How: after ``--warmup`` discarded calls of each, the four measurements run in blocks of
``--steps`` calls, one block each per round, the block order rotating every round, for
``--rounds`` rounds; each call is timed alone and the medians over all timed calls are
reported.

``--width`` times a larger velocity MLP of the same class (randomly initialised; 872 has
10.0× the pretrained model's 0.24 M parameters), ``--prompts-per-step`` and ``--group-size``
a larger batch.

Run (about 40 s on one idle CPU thread; the first run of the digits task pretrains and caches
its models for ~45 s more)::

    .venv/bin/python benchmarks/trainer_efficiency.py
    .venv/bin/python benchmarks/trainer_efficiency.py --rounds 48 --steps 10 --threads 2
    .venv/bin/python benchmarks/trainer_efficiency.py --prompts-per-step 128 --rounds 12  # N = 1024
    .venv/bin/python benchmarks/trainer_efficiency.py --width 872 --rounds 24             # 10x model
"""

from __future__ import annotations

import copy
import gc
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from _common import digits_trainer, flow_step_parser, git_commit, machine, timed_calls

from adrpo.flow.sampler import sample_euler
from adrpo.tasks.digits import DigitsTask


def main() -> None:
    parser = flow_step_parser(__doc__, what="measurement")
    parser.add_argument("--width", type=int, default=None, help="Hidden width of the velocity MLP (default: the pretrained model's).")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    task = DigitsTask()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = digits_trainer(args, task, "adrpo", str(Path(tmp) / "adrpo"), width=args.width)
        parameters = sum(p.numel() for p in trainer.policy.parameters())
        config = trainer.config
        device, n = trainer.device, args.prompts_per_step * args.group_size

        # One batch of the step's shapes: prompt-major prompts, (N, D) states, (N,) times.
        generator = torch.Generator(device=device).manual_seed(args.seed)
        unique = [task.train_prompts[i % len(task.train_prompts)] for i in range(args.prompts_per_step)]
        prompts = [p for p in unique for _ in range(args.group_size)]
        cond = trainer.policy.encode_prompts(prompts)  # (N, F)
        shape = (n, *trainer.policy.data_shape)
        x0 = torch.randn(shape, generator=generator, device=device)
        x_t = torch.randn(shape, generator=generator, device=device)
        u_t = torch.randn(shape, generator=generator, device=device)
        t = torch.rand(n, generator=generator, device=device)
        advantages = torch.randn(n, generator=generator, device=device).clamp(-config.beta0, config.beta0)
        coefficient = config.beta0 - advantages
        v_ref = trainer.reference_velocity(x_t, t, cond)

        student = copy.deepcopy(trainer.policy).train()
        optimizer = torch.optim.AdamW(student.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)

        def sampling() -> torch.Tensor:
            return sample_euler(
                trainer.policy, cond, x0,
                num_steps=config.sampling_steps, guidance_scale=config.guidance_scale, grid=trainer.time_grid(config.sampling_steps),
            )

        def policy_update() -> None:
            v = student(x_t, t, cond)
            match = (v - u_t).pow(2).flatten(1).mean(dim=1)  # (N,)
            w2 = (v - v_ref).pow(2).flatten(1).mean(dim=1)  # (N,)
            (advantages * match + coefficient * w2).mean().backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        measurements: dict[str, Callable[[], object]] = {
            "full step": trainer.step,
            "(a) sampling": sampling,
            "(b) policy fwd+bwd+AdamW": policy_update,
            "(c) reference fwd": lambda: trainer.reference_velocity(x_t, t, cond),
        }
        names = list(measurements)
        for fn in measurements.values():
            timed_calls(fn, args.warmup)
        times: dict[str, list[float]] = {name: [] for name in names}
        gc.collect()
        gc.disable()  # as timeit does: a collection costs ~0.1 s here and would land in one call
        try:
            for round_ in range(args.rounds):
                shift = round_ % len(names)  # rotate the block order so drift hits every measurement
                for name in names[shift:] + names[:shift]:
                    times[name] += timed_calls(measurements[name], args.steps)
        finally:
            gc.enable()

    medians = {name: statistics.median(values) for name, values in times.items()}
    unavoidable = sum(medians[name] for name in names[1:])
    ratio = medians["full step"] / unavoidable
    print(f"machine: {machine()}")
    print(f"commit: {git_commit()}")
    print(
        f"settings: method=adrpo B={args.prompts_per_step} G={args.group_size} N={n} "
        f"sampling_steps={args.sampling_steps} guidance={args.guidance_scale} "
        f"max_grad_norm={config.max_grad_norm} seed={args.seed} rounds={args.rounds} "
        f"steps/block={args.steps} warmup={args.warmup} (interleaved, rotating order)"
    )
    pretrained = "pretrained" if args.width in (None, task.base_config["width"]) else "random init"
    print(f"model: MLPVelocityModel width={trainer.policy.config['width']} depth={trainer.policy.config['depth']}, "
          f"{parameters / 1e6:.2f} M parameters, {pretrained}")
    for name in names:
        values = times[name]
        print(
            f"{name:>26}: median {medians[name] * 1e3:8.3f} ms "
            f"(min {min(values) * 1e3:.3f}, max {max(values) * 1e3:.3f}, n={len(values)})"
        )
    print(f"{'unavoidable (a)+(b)+(c)':>26}: {unavoidable * 1e3:8.3f} ms")
    print(f"ratio full step / unavoidable compute: {ratio:.3f} (target <= 1.10)")


if __name__ == "__main__":
    main()
