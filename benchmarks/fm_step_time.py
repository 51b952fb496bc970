"""Step time of ADRPO-FM against ORW-CFM-W2 in the same FlowTrainer.

What is measured: the wall time of one ``FlowTrainer.step()`` (sample N = B·G images with
the Euler sampler, score them, advantages, reference and policy velocities, the method's
loss, backward, optimizer step, metrics) with ``FlowConfig.method`` set to each of the two.
One trainer, built from the digits task's pretrained base model, takes both: before each
block its config and loss function are switched to the block's method. (Two trainers, one
per method, as before 38014d1, measured where each one's tensors happened to sit in memory as
much as the methods: nine runs on one machine spread 0.974–1.032 (median 1.013), ten runs of
one trainer 0.992–1.022 (median 0.998, eight of them within 0.992–1.005).)

How: the two methods run in alternating blocks of ``--steps`` steps (ABBA order, so that
a slow drift of the machine hits both equally) for ``--rounds`` rounds, after
``--warmup`` discarded steps of each. Each step is timed alone; the script prints each
method's median step time and their ratio. ADRPO's extra work over ORW-CFM-W2 is the
adaptive coefficient β0 − clip(A) on N scalars, so the target is a ratio ≤ 1.01.

Run (about 40 s on one idle CPU thread; the first run of the digits task pretrains and caches
its models for ~45 s more)::

    .venv/bin/python benchmarks/fm_step_time.py
    .venv/bin/python benchmarks/fm_step_time.py --rounds 48 --steps 10 --threads 2
"""

from __future__ import annotations

import dataclasses
import gc
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from _common import digits_trainer, flow_step_parser, git_commit, machine, timed_calls

from adrpo.flow.methods import LOSSES
from adrpo.tasks.digits import DigitsTask

METHODS = ("adrpo", "orw_cfm_w2")


def main() -> None:
    parser = flow_step_parser(__doc__, what="method")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    task = DigitsTask()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = digits_trainer(args, task, METHODS[0], str(Path(tmp) / "trainer"))
        configs = {method: dataclasses.replace(trainer.config, method=method) for method in METHODS}

        def step_as(method: str) -> Callable[[], object]:
            trainer.config, trainer.loss_fn = configs[method], LOSSES[method]
            return trainer.step

        for method in METHODS:
            timed_calls(step_as(method), args.warmup)
        times: dict[str, list[float]] = {method: [] for method in METHODS}
        gc.collect()
        gc.disable()  # as timeit does: a collection costs ~0.1 s here and would land in one step
        try:
            for round_ in range(args.rounds):
                order = METHODS if round_ % 2 == 0 else METHODS[::-1]  # ABBA: cancels slow drift
                for method in order:
                    times[method] += timed_calls(step_as(method), args.steps)
        finally:
            gc.enable()

    medians = {method: statistics.median(values) for method, values in times.items()}
    ratio = medians["adrpo"] / medians["orw_cfm_w2"]
    print(f"machine: {machine()}")
    print(f"commit: {git_commit()}")
    print(
        f"settings: B={args.prompts_per_step} G={args.group_size} N={args.prompts_per_step * args.group_size} "
        f"sampling_steps={args.sampling_steps} guidance={args.guidance_scale} seed={args.seed} "
        f"rounds={args.rounds} steps/block={args.steps} warmup={args.warmup} (one trainer, interleaved ABBA)"
    )
    for method in METHODS:
        values = times[method]
        print(
            f"{method:>11}: median {medians[method] * 1e3:8.3f} ms/step "
            f"(min {min(values) * 1e3:.3f}, max {max(values) * 1e3:.3f}, n={len(values)})"
        )
    print(f"ratio adrpo/orw_cfm_w2 step time: {ratio:.3f} (target <= 1.01)")


if __name__ == "__main__":
    main()
