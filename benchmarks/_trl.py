"""Shared by the TRL step-time benchmarks (grpo_step_time.py, audio_step_time.py): a per-step wall-time
callback and their options."""

from __future__ import annotations

import argparse
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
