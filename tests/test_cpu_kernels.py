"""adrpo.experiments.cpu_kernels: experiments run torch's and oneDNN's AVX2 CPU kernels on x86-64, so their tables
are the same on AVX2 and AVX-512 CPUs (measured: `make demo`, `make llm-demo` and the audio base model on an
AVX-512 machine print the AVX2 machine's tables digit for digit with them, and not without). Each case runs in a
fresh interpreter, since torch fixes its choice of kernels at the first one it runs."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from adrpo.experiments.cpu_kernels import KERNELS

pytestmark = pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86-64 kernels")

PIN = """
import json, os, subprocess, sys
import torch
from adrpo.experiments.cpu_kernels import pin_cpu_kernels
{before}
chosen = pin_cpu_kernels()
child = subprocess.run([sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
                       capture_output=True, text=True, check=True).stdout.strip()
print(json.dumps({{"chosen": chosen, "now": torch.backends.cpu.get_cpu_capability(), "child": child,
                  "variable": os.environ.get("ATEN_CPU_CAPABILITY"), "onednn": os.environ.get("ONEDNN_MAX_CPU_ISA")}}))
"""


def unpinned(**env: str) -> dict[str, str]:
    """This environment without the kernel variables (conftest sets them for the tests' own process), plus ``env``."""
    return {k: v for k, v in os.environ.items() if k not in KERNELS} | env


def pinned(before: str = "", **env: str) -> dict:
    environment = unpinned(**env)
    result = subprocess.run([sys.executable, "-c", PIN.format(before=before)], capture_output=True, text=True, env=environment,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.splitlines()[-1])


def test_a_fresh_process_and_the_workers_it_starts_run_the_avx2_kernels():
    assert pinned() == {"chosen": "AVX2", "now": "AVX2", "child": "AVX2", "variable": "avx2", "onednn": "AVX2"}


def test_a_process_that_already_chose_keeps_its_kernels_and_its_workers_follow_it():
    report = pinned(before="torch.randn(64).softmax(0)")  # the first kernel: torch's own choice (AVX512 on such a CPU)
    assert report["chosen"] == report["now"] == report["child"]
    assert (report["variable"], report["onednn"]) == (("avx2", "AVX2") if report["chosen"] == "AVX2" else (None, None))


def test_a_users_own_choice_is_kept():
    assert pinned(ATEN_CPU_CAPABILITY="default") == {"chosen": "DEFAULT", "now": "DEFAULT", "child": "DEFAULT", "variable": "default",
                                                     "onednn": None}
    assert pinned(ONEDNN_MAX_CPU_ISA="AVX512_CORE")["variable"] is None  # one of the two set: the user chose


def test_pretrained_models_are_cached_per_kernel_family():
    """A base model pretrained with AVX-512 kernels is another model than with AVX2 ones: its cache entry too."""
    code = "from adrpo.tasks.digits import PretrainSettings; print(PretrainSettings().key())"
    settings = [{"ATEN_CPU_CAPABILITY": "default"}, {"ATEN_CPU_CAPABILITY": "avx2"},
                {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}]
    keys = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120,
                           env=unpinned(**kernels)).stdout.strip() for kernels in settings]
    assert len(set(keys)) == 3 and all(len(key) == 12 for key in keys)
