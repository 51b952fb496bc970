"""adrpo.experiments.cpu_kernels: experiments run torch's and oneDNN's AVX2 CPU kernels and MKL's SSE2 reproducible
path on x86-64, so their tables are the same on AVX2 and AVX-512 CPUs of either maker (measured: `make demo`,
`make llm-demo` and the audio base model on an AVX-512 machine print the AVX2 machine's tables digit for digit with
them, and not without). Each case runs in a fresh interpreter, since the libraries fix their choice of kernels at
the first one they run."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

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
                  "variable": os.environ.get("ATEN_CPU_CAPABILITY"), "onednn": os.environ.get("ONEDNN_MAX_CPU_ISA"),
                  "mkl": os.environ.get("MKL_CBWR")}}))
"""


def unpinned(**env: str) -> dict[str, str]:
    """This environment without the kernel variables (conftest sets them for the tests' own process), plus ``env``."""
    return {k: v for k, v in os.environ.items() if k not in KERNELS} | env


def last_line(code: str, **env: str) -> str:
    """The last line ``code`` prints in a fresh interpreter with :func:`unpinned` ``env``."""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=unpinned(**env), timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.splitlines()[-1]


def pinned(before: str = "", **env: str) -> dict:
    return json.loads(last_line(PIN.format(before=before), **env))


def test_a_fresh_process_and_the_workers_it_starts_run_the_avx2_kernels():
    assert pinned() == {"chosen": "AVX2", "now": "AVX2", "child": "AVX2", "variable": "avx2", "onednn": "AVX2",
                        "mkl": "COMPATIBLE,STRICT"}


def test_a_process_that_already_chose_keeps_its_kernels_and_its_workers_follow_it():
    report = pinned(before="torch.randn(64).softmax(0)")  # the first kernel: torch's own choice (AVX512 on such a CPU)
    assert report["chosen"] == report["now"] == report["child"]
    expected = tuple(KERNELS.values()) if report["chosen"] == "AVX2" else (None, None, None)
    assert (report["variable"], report["onednn"], report["mkl"]) == expected


def test_a_users_own_choice_is_kept_and_the_other_variables_still_pinned():
    assert pinned(ATEN_CPU_CAPABILITY="default") == {"chosen": "DEFAULT", "now": "DEFAULT", "child": "DEFAULT", "variable": "default",
                                                     "onednn": "AVX2", "mkl": "COMPATIBLE,STRICT"}
    report = pinned(ONEDNN_MAX_CPU_ISA="AVX512_CORE", MKL_CBWR="AUTO")
    assert (report["chosen"], report["onednn"], report["mkl"]) == ("AVX2", "AVX512_CORE", "AUTO")


PRODUCT = """
import hashlib, torch
from adrpo.experiments.cpu_kernels import pin_cpu_kernels
{pin}
generator = torch.Generator().manual_seed(0)
a, b = torch.randn(67, 129, generator=generator), torch.randn(129, 45, generator=generator)
print(hashlib.sha256((a @ b).numpy().tobytes()).hexdigest())
"""


def product_digest(pin: bool, **env: str) -> str:
    return last_line(PRODUCT.format(pin="pin_cpu_kernels()" if pin else ""), **env)


def test_pinned_matrix_products_do_not_depend_on_the_cpus_instruction_sets():
    """MKL restricted to AVX2 or SSE4.2 is the code an older CPU gets: the pinned product is the same bits on all."""
    digests = {product_digest(True, **env) for env in ({}, {"MKL_ENABLE_INSTRUCTIONS": "AVX2"},
                                                       {"MKL_ENABLE_INSTRUCTIONS": "SSE4_2"})}
    assert len(digests) == 1


def test_unpinned_matrix_products_follow_the_cpu_on_an_avx512_cpu():
    """What the MKL pin is for: without it, the same product differs between MKL's AVX-512 and AVX2 code."""
    if "avx512f" not in Path("/proc/cpuinfo").read_text():
        pytest.skip("MKL takes its AVX2 code on this CPU anyway")
    assert product_digest(False, MKL_CBWR="AUTO") != product_digest(False, MKL_CBWR="AUTO", MKL_ENABLE_INSTRUCTIONS="AVX2")


def test_pretrained_models_are_cached_per_kernel_family():
    """A base model pretrained with other torch, oneDNN or MKL kernels is another model: its cache entry too."""
    code = "from adrpo.tasks.digits import PretrainSettings; print(PretrainSettings().key())"
    settings = [{"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AUTO"},
                {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE", "MKL_CBWR": "AUTO"},
                {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AUTO"},
                {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "COMPATIBLE,STRICT"}]
    keys = [last_line(code, **kernels) for kernels in settings]
    assert len(set(keys)) == 4 and all(len(key) == 12 for key in keys)
