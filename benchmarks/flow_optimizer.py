"""A FlowTrainer step with the trainer's AdamW (multi-tensor, ``adrpo.flow.engine.adamw``) against torch's
default one on a CPU (a Python loop over the parameters), on the same trainer.

One ADRPO-FM trainer on the digits task's pretrained model steps in alternating blocks of ``--steps`` steps
(ABBA order) with its own optimizer and with ``torch.optim.AdamW(foreach=False)`` over the same parameters
(each optimizer keeps its own moments; the step's other work is the same trainer's), for ``--rounds``
rounds after ``--warmup`` discarded steps of each. Each step is timed alone, and so is the optimizer's
``step()`` inside it (wrapped). Printed: each optimizer's median step time and median ``step()`` time, the
differences, and the ratio loop/multi-tensor of the whole step (reported).

    .venv/bin/python benchmarks/flow_optimizer.py        # ~40 s on one CPU thread
"""

from __future__ import annotations

import dataclasses
import gc
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from _common import digits_trainer, flow_step_parser, git_commit, machine, timed_calls

from adrpo.tasks.digits import DigitsTask

NAMES = ("multi-tensor", "loop")


def timed_method(method: Callable, times: list[float]) -> Callable:
    """``method`` that appends each call's seconds to ``times``."""
    def call(*args, **kwargs):
        start = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            times.append(time.perf_counter() - start)
    return call


def main() -> None:
    args = flow_step_parser(__doc__, what="optimizer").parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    task = DigitsTask()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = digits_trainer(args, task, "adrpo", str(Path(tmp) / "trainer"))
        own = trainer.calls
        loop = torch.optim.AdamW(list(trainer.trainable.values()), lr=trainer.config.learning_rate,
                                 weight_decay=trainer.config.weight_decay, foreach=False)
        calls = {"multi-tensor": own, "loop": dataclasses.replace(own, optimizer=loop)}
        optimizer_times: dict[str, list[float]] = {name: [] for name in NAMES}
        for name in NAMES:
            calls[name].optimizer.step = timed_method(calls[name].optimizer.step, optimizer_times[name])

        def step_with(name: str) -> Callable[[], object]:
            trainer.calls = calls[name]
            return trainer.step

        for name in NAMES:
            timed_calls(step_with(name), args.warmup)
            optimizer_times[name].clear()
        times: dict[str, list[float]] = {name: [] for name in NAMES}
        gc.collect()
        gc.disable()  # as timeit does
        try:
            for round_ in range(args.rounds):
                for name in NAMES if round_ % 2 == 0 else NAMES[::-1]:
                    times[name] += timed_calls(step_with(name), args.steps)
        finally:
            gc.enable()

    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"machine: {machine()}")
    print(f"commit: {git_commit()}")
    print(f"settings: method=adrpo B={args.prompts_per_step} G={args.group_size} sampling_steps={args.sampling_steps} "
          f"rounds={args.rounds} steps/block={args.steps} warmup={args.warmup} (one trainer, interleaved ABBA), seed={args.seed}")
    inside = {name: statistics.median(values) for name, values in optimizer_times.items()}
    for name, values in times.items():
        print(f"  {name:>12}: median {1e3 * medians[name]:8.3f} ms/step (min {1e3 * min(values):.3f}, max {1e3 * max(values):.3f}, "
              f"n={len(values)}), optimizer step() inside it {1e3 * inside[name]:.3f} ms")
    print(f"  difference loop - multi-tensor: {1e3 * (medians['loop'] - medians['multi-tensor']):.3f} ms/step, "
          f"{1e3 * (inside['loop'] - inside['multi-tensor']):.3f} ms in step()")
    print(f"ratio loop / multi-tensor AdamW step time: {medians['loop'] / medians['multi-tensor']:.3f} (reported)")


if __name__ == "__main__":
    main()
