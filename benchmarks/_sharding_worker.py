"""One `accelerate launch`ed process of ``sharding.py``: a full fine-tuning FlowTrainer on the digits
task (a widened velocity MLP), trained by ``trainer.train()``, reporting what it holds and how fast
it stepped to ``--out``-``rank<i>``.json.

A post-step hook on the trainer's torch AdamW (``register_step_post_hook``: after ``step()``,
before the trainer's ``zero_grad``) takes the time of every optimizer step and, at the first one,
counts the bytes of this process's local storage: each parameter, its gradient and its AdamW
state (``exp_avg``, ``exp_avg_sq``, ``step``) of the policy, and the frozen reference's
parameters. A DTensor counts the storage of its local shard (FSDP2 pads the shard's rows to the
same count on every rank; the padding is held, so it is counted), any other tensor its own;
each storage is counted once. The step's parts are timed as ``trainer_efficiency.py`` times them
inside a step (:func:`trainer_efficiency.timed_inside`: the trainer's sampling, reference and
loss-backward-optimizer calls wrapped on the instance). Nothing in ``adrpo`` is changed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import torch
from _common import digits_model
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor
from trainer_efficiency import timed_inside

from adrpo.distributed_exit import end_distributed
from adrpo.flow.config import FlowConfig
from adrpo.flow.trainer import FlowTrainer
from adrpo.tasks.digits import DigitsTask


def local_bytes(tensors: Iterable[torch.Tensor | None]) -> int:
    """Bytes of the distinct storages behind ``tensors`` on this process (a DTensor's local shard)."""
    seen: dict[int, int] = {}
    for tensor in tensors:
        if tensor is None:
            continue
        storage = (tensor.to_local() if isinstance(tensor, DTensor) else tensor).untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def held_bytes(trainer: FlowTrainer, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """What this process holds of the policy (parameters, gradients, optimizer state) and the reference."""
    params = list(trainer.trainable.values())
    state = [value for p in params for value in optimizer.state[p].values() if isinstance(value, torch.Tensor)]
    reference = list(trainer.reference.parameters()) if trainer.reference is not None else []
    return {
        "parameters": local_bytes(params),
        "gradients": local_bytes(p.grad for p in params),
        "optimizer_state": local_bytes(state),
        "reference": local_bytes(reference),
        "whole_parameters": sum(p.numel() * p.element_size() for p in params),  # the unsharded model, for scale
        "dtensor_parameters": sum(isinstance(p, DTensor) for p in params),
        "tensors": len(params),
    }


def collective_seconds(numel: int, calls: int = 20) -> dict[str, float]:
    """Median seconds of one gloo collective of a float32 tensor of ``numel`` (the whole policy), as FSDP2 and DDP
    call them: an all-gather of this process's share, a reduce-scatter into it, an all-reduce of the whole."""
    import torch.distributed as dist

    world = dist.get_world_size()
    share = torch.randn(-(-numel // world))
    whole_tensor = torch.randn(share.numel() * world)
    calls_of = {
        "all_gather": lambda: dist.all_gather_into_tensor(whole_tensor, share),
        "reduce_scatter": lambda: dist.reduce_scatter_tensor(share, whole_tensor),
        "all_reduce": lambda: dist.all_reduce(whole_tensor),
    }
    seconds = {}
    for name, call in calls_of.items():
        times = []
        for _ in range(calls + 2):
            dist.barrier()
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
        seconds[name] = statistics.median(times[2:])
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="JSON path prefix; each rank writes <out>.rank<i>.json")
    parser.add_argument("--cache", default=None, help="Digits cache folder (default: $ADRPO_CACHE or ~/.cache/adrpo).")
    parser.add_argument("--settings", default="{}", help="Digits PretrainSettings fields as JSON.")
    parser.add_argument("--width", type=int, required=True)
    parser.add_argument("--prompts-per-step", type=int, required=True)
    parser.add_argument("--group-size", type=int, required=True)
    parser.add_argument("--sampling-steps", type=int, required=True)
    parser.add_argument("--warmup", type=int, required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gather-per-forward", action="store_true", help="fsdp_gather_for_sampling: false")
    args = parser.parse_args()
    torch.set_num_threads(1)

    task = DigitsTask(json.loads(args.settings), cache=args.cache)
    model = digits_model(task, args.width, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        config = FlowConfig(
            method="adrpo", prompts_per_step=args.prompts_per_step, group_size=args.group_size,
            sampling_steps=args.sampling_steps, num_steps=args.warmup + args.steps, seed=args.seed,
            output_dir=str(Path(tmp) / "run"), report_to=["none"], progress_bar=False, checkpoint_steps=0, monitor="off",
            fsdp_gather_for_sampling=not args.gather_per_forward,
        )
        trainer = FlowTrainer(config, model, task.reward, task.train_prompts, diversity_fn=task.embed)
        optimizer = getattr(trainer.calls.optimizer, "optimizer", trainer.calls.optimizer)  # torch's AdamW under accelerate's wrapper
        stamps: list[float] = []
        counted: dict[str, int] = {}

        def after_step(opt, *_) -> None:
            stamps.append(time.perf_counter())
            if not counted:
                counted.update(held_bytes(trainer, opt))

        optimizer.register_step_post_hook(after_step)
        parts: dict[str, list[float]] = {"sampling": [], "update": [], "reference": []}
        with timed_inside(trainer, parts):
            trainer.train()
        accelerator = trainer.accelerator
        collectives = collective_seconds(counted["whole_parameters"] // 4) if accelerator.num_processes > 1 else {}
        report = {
            "rank": accelerator.process_index,
            "processes": accelerator.num_processes,
            "distributed_type": str(accelerator.distributed_type),
            "fsdp2": bool(accelerator.is_fsdp2),
            "threads": torch.get_num_threads(),
            "samples_per_step": args.prompts_per_step * args.group_size,
            "optimizer_steps": len(stamps),
            # seconds from the end of the last warm-up step to the end of the last step: build,
            # start-up and the final checkpoint do not count
            "timed_steps": args.steps,
            "timed_seconds": stamps[-1] - stamps[args.warmup - 1],
            "bytes": counted,
            # mean seconds of each part over the timed steps (update: loss, backward, optimizer step, zero_grad),
            # a share of timed_seconds / timed_steps
            "parts": {name: statistics.fmean(values[args.warmup:]) for name, values in parts.items()},
            "units": sum(isinstance(part, FSDPModule) for part in trainer.model.modules()),
            "collectives": collectives,
        }
        accelerator.state.destroy_process_group()
    Path(f"{args.out}.rank{report['rank']}.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
    end_distributed()  # the trainer's cycles freed before Python's exit (see adrpo.distributed_exit)
