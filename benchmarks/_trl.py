"""Shared by the TRL step-time benchmarks (grpo_step_time.py, audio_step_time.py): a per-step wall-time
callback, the palindromic block schedule, the median lines and their options."""

from __future__ import annotations

import argparse
import statistics
import time

from transformers import TrainerCallback


class StepTimer(TrainerCallback):
    """The wall time of every optimizer step (generation, scoring, loss, backward, optimizer) in :attr:`times`."""

    def __init__(self):
        self.times: list[float] = []
        self._start = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self._start)


def trl_step_parser(doc: str, *, rounds: int) -> argparse.ArgumentParser:
    """--rounds (default ``rounds``), --steps per block, --warmup steps dropped per block, --threads, --seed."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps per block")
    parser.add_argument("--warmup", type=int, default=2, help="steps dropped at the start of each block")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    return parser


def train_in_palindromic_blocks(trainers: dict, timers: dict[str, StepTimer], *, rounds: int, warmup: int) -> dict[str, list[float]]:
    """Per-step seconds of each trainer: every round calls each one's ``train()`` once (a block), in the dicts'
    order on even rounds and reversed on odd ones (ABBA for two trainers, ABCCBA for three), and keeps the
    steps after the first ``warmup`` of each block."""
    samples: dict[str, list[float]] = {name: [] for name in timers}
    for round_index in range(rounds):
        order = list(timers) if round_index % 2 == 0 else list(reversed(timers))
        for name in order:
            timers[name].times.clear()
            trainers[name].train()
            samples[name].extend(timers[name].times[warmup:])
    return samples


def print_step_medians(samples: dict[str, list[float]]) -> dict[str, float]:
    """Print each trainer's median, min and max step time; returns the medians (seconds)."""
    medians = {name: statistics.median(values) for name, values in samples.items()}
    for name, values in samples.items():
        print(f"  {name:>5}: median {1000 * medians[name]:8.3f} ms/step (min {1000 * min(values):.3f}, max {1000 * max(values):.3f}, n={len(values)})")
    return medians
