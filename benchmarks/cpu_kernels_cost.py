"""What pinning MKL's reproducible code costs: float32 matrix products under the experiments' kernels
(:data:`adrpo.experiments.cpu_kernels.KERNELS`, MKL_CBWR=COMPATIBLE,STRICT) against the same with MKL's own
choice (MKL_CBWR=AUTO), each in a fresh process (MKL fixes its code at the first call), the two alternating
(ABAB) for ``--rounds`` rounds; per shape the median over rounds of each round's median call, and the ratio.

The shapes are the miniatures' (N = 64 samples through the digits MLP's width 256; a batch of 32 sequences of
24 tokens through the arithmetic model's width 64) and two larger ones.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
from _common import git_commit, machine  # noqa: E402

SHAPES = [(64, 256, 256), (768, 64, 64), (768, 64, 256), (512, 512, 512)]  # (m, k, n): (m, k) @ (k, n)

CHILD = """
import json, statistics, time, torch
from adrpo.experiments.cpu_kernels import pin_cpu_kernels
pin_cpu_kernels()
torch.set_num_threads(1)
generator = torch.Generator().manual_seed(0)
medians = []
for m, k, n in {shapes}:
    a, b = torch.randn(m, k, generator=generator), torch.randn(k, n, generator=generator)
    calls = max(20, int(2e8 // (m * k * n)))
    for _ in range(5):
        a @ b
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    medians.append(statistics.median(times))
print(json.dumps(medians))
"""


def child_medians(env: dict[str, str]) -> list[float]:
    """Median seconds per product of each shape, in a fresh process with ``env``."""
    result = subprocess.run([sys.executable, "-c", CHILD.format(shapes=SHAPES)], env=env, capture_output=True, text=True,
                            check=True, timeout=600)
    return json.loads(result.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="Pairs of fresh processes, pinned then MKL's own choice.")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as each child runs
    base = {k: v for k, v in os.environ.items() if k != "MKL_CBWR"}
    pinned, auto = [], []
    for _ in range(args.rounds):
        pinned.append(child_medians(base))
        auto.append(child_medians(base | {"MKL_CBWR": "AUTO"}))
    print(f"machine: {machine()}\ncommit: {git_commit()} | rounds {args.rounds}")
    ratios = []
    for index, (m, k, n) in enumerate(SHAPES):
        a = statistics.median(run[index] for run in pinned)
        b = statistics.median(run[index] for run in auto)
        ratios.append(a / b)
        print(f"({m}, {k}) @ ({k}, {n}): pinned {a * 1e6:8.1f} us | MKL's own {b * 1e6:8.1f} us | ratio {a / b:.2f}")
    print(f"pinned / MKL's own, geometric mean over the shapes: {statistics.geometric_mean(ratios):.2f}")


if __name__ == "__main__":
    main()
