"""Shared by the benchmarks: the machine and commit lines, timing, the flow benchmarks' options."""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import torch


def git_commit() -> str:
    """Short commit of this checkout, marked when the tree has uncommitted changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit} (uncommitted changes)" if dirty else commit


def machine() -> str:
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return (
        f"{platform.platform()} | {platform.processor() or platform.machine()} | cpus {os.cpu_count()} | "
        f"torch {torch.__version__} | threads {torch.get_num_threads()} | device {device} | "
        f"load avg {os.getloadavg()[0]:.2f}"
    )


def sync() -> None:
    """Wait for queued GPU work so a timer measures it."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed_calls(fn: Callable[[], object], count: int) -> list[float]:
    """Seconds of each of ``count`` consecutive calls of ``fn``."""
    times = []
    for _ in range(count):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return times


def flow_step_parser(doc: str, *, what: str) -> argparse.ArgumentParser:
    """The options both flow-trainer benchmarks take; ``what`` names one timed unit."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=96, help=f"Rounds of one block per {what}.")
    parser.add_argument("--steps", type=int, default=5, help="Timed calls per block.")
    parser.add_argument("--warmup", type=int, default=10, help=f"Discarded calls per {what} before timing.")
    parser.add_argument("--prompts-per-step", type=int, default=8, help="B.")
    parser.add_argument("--group-size", type=int, default=8, help="G.")
    parser.add_argument("--sampling-steps", type=int, default=20, help="Euler steps of the sampler.")
    parser.add_argument("--guidance-scale", type=float, default=1.0, help="Classifier-free guidance weight.")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the trainers and the synthetic batch.")
    return parser


def digits_model(task, width: int | None, seed: int):
    """The digits task's pretrained velocity MLP, or with another hidden ``width`` a randomly
    initialised one of the same class, depth, time features and vocabulary: the same work per
    step at a larger size, for timing (its samples are noise to the reward)."""
    from adrpo.flow.models.mlp import MLPVelocityModel

    cfg = task.base_config
    if width is None or width == cfg["width"]:
        return task.base_model()
    torch.manual_seed(seed)
    return MLPVelocityModel(cfg["data_dim"], cfg["vocab"], width=width, depth=cfg["depth"], time_dim=cfg["time_dim"])


def digits_trainer(args: argparse.Namespace, task, method: str, output_dir: str, *, width: int | None = None):
    """A FlowTrainer on the digits task with the benchmark options ``args`` (no logging, no
    checkpoints), on :func:`digits_model` of ``width``."""
    from adrpo.flow.config import FlowConfig
    from adrpo.flow.trainer import FlowTrainer

    config = FlowConfig(
        method=method, prompts_per_step=args.prompts_per_step, group_size=args.group_size,
        sampling_steps=args.sampling_steps, guidance_scale=args.guidance_scale,
        num_steps=args.warmup + args.rounds * args.steps, seed=args.seed, output_dir=output_dir,
        report_to=["none"], progress_bar=False, checkpoint_steps=0,
    )
    return FlowTrainer(config, digits_model(task, width, args.seed), task.reward, task.train_prompts)
