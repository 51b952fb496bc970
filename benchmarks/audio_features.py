"""Feature extraction of an audio batch: each distinct clip once, as the audio path does, against every copy.

A Whisper feature extractor configured as Qwen2-Audio's (128 mel bins, a 30-second window every clip is
padded to) and a batch of B·G clips in which each of B distinct clips (5 to 30 seconds of tone and noise)
appears G times in a row, as TRL repeats a prompt for its G completions, each copy a separate array as the
dataloader hands them out:

- ``once``: :func:`adrpo.llm.audio_features.share_repeated_clips` on the copies, then the extractor wrapped as
  ``AudioGRPOTrainer`` wraps it (``OncePerClip``): B clips extracted, their rows repeated;
- ``every``: the extractor on all B·G copies, as before.

Both give the same features bit for bit (checked). The two alternate for ``--rounds`` rounds after one
discarded call each; medians are compared. Printed: the ratio every/once (reported).

    .venv/bin/python benchmarks/audio_features.py        # ~15 s on one CPU thread
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np
import torch
from _common import git_commit, machine, timed_calls
from transformers import WhisperFeatureExtractor

from adrpo.llm.audio_features import OncePerClip, share_repeated_clips

RATE = 16000
SETTINGS = dict(sampling_rate=RATE, return_attention_mask=True, padding="max_length", return_tensors="pt")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=4, help="B, distinct clips per batch.")
    parser.add_argument("--group-size", type=int, default=8, help="G, copies of each clip.")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    extractor = WhisperFeatureExtractor(feature_size=128)
    rng = np.random.default_rng(args.seed)
    seconds = np.linspace(5, 30, args.prompts)
    distinct = [(0.3 * np.sin(2 * np.pi * rng.uniform(100, 2000) * np.arange(int(RATE * s)) / RATE)
                 + 0.05 * rng.standard_normal(int(RATE * s))).astype(np.float32) for s in seconds]
    copies = [clip.copy() for clip in distinct for _ in range(args.group_size)]

    def once() -> dict:
        return OncePerClip(extractor)(share_repeated_clips(copies), **SETTINGS)

    def every() -> dict:
        return extractor(copies, **SETTINGS)

    a, b = once(), every()
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a), "the features differ"
    times: dict[str, list[float]] = {"once": [], "every": []}
    for round_ in range(args.rounds):
        for name in (["once", "every"] if round_ % 2 == 0 else ["every", "once"]):
            times[name] += timed_calls(once if name == "once" else every, 1)
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"machine: {machine()}")
    print(f"commit: {git_commit()}")
    print(f"settings: WhisperFeatureExtractor 128 mel bins, 30 s window, {args.prompts} distinct clips of "
          f"{', '.join(f'{s:.1f}' for s in seconds)} s x G={args.group_size} copies = {len(copies)} clips, "
          f"rounds={args.rounds} (alternating), seed={args.seed}")
    for name, values in times.items():
        print(f"  {name:>5}: median {1000 * medians[name]:8.2f} ms (min {1000 * min(values):.2f}, max {1000 * max(values):.2f}, n={len(values)})")
    print(f"ratio every copy / each distinct clip once: {medians['every'] / medians['once']:.2f} (reported)")


if __name__ == "__main__":
    main()
