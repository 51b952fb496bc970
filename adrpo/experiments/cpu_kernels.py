"""One family of CPU kernels for every experiment, so that its tables reproduce on any x86-64 CPU.

Three libraries pick their vectorised CPU code by the CPU they run on, and each sums floats in another order
on each choice:

- torch's own kernels (softmax, log-softmax, layer norm, reductions, ...) by the widest instruction set,
  AVX2 or AVX-512; ``ATEN_CPU_CAPABILITY=avx2`` fixes them. Measured on AMD EPYC CPUs: ``make llm-demo``'s
  base accuracy 0.2125 on AVX-512 against 0.221 ± 0.011 on AVX2, ``make demo``'s Flow-DPO 0.834 ± 0.016
  against 0.840 ± 0.008;
- oneDNN, which computes the audio encoder's convolutions, likewise; ``ONEDNN_MAX_CPU_ISA=AVX2`` fixes it
  (``make audio-demo``'s base 0.583 ± 0.020 with torch's AVX2 kernels but oneDNN's AVX-512 ones, against
  0.589 ± 0.027);
- MKL, which computes every matrix product (``nn.Linear``, attention), by the CPU's maker and model: with
  the two above fixed, an AMD EPYC and an Intel Xeon (AVX-512 and AMX) still ended ``make demo``'s RAFT and
  Flow-DPO rows apart (Flow-DPO 0.840 ± 0.008 against 0.818 ± 0.037) and every recorded step digest of
  ``tests/test_step_equivalence.py``. ``MKL_CBWR=COMPATIBLE,STRICT`` fixes it: MKL's conditional numerical
  reproducibility on the SSE2 code path, the one Intel documents as giving the same results on Intel and
  Intel-compatible (AMD) CPUs, STRICT for any alignment and thread count. Measured on the Xeon: its results
  equal those with MKL restricted to AVX2 or SSE4.2 (``MKL_ENABLE_INSTRUCTIONS``, the code an older CPU gets).
  It costs time: one-thread float32 products of the miniatures' shapes 4.4-4.9× as long
  (``benchmarks/cpu_kernels_cost.py``), ``make demo`` 1.8× (117 s against 64 s, each pretraining its base
  model), ``make moving`` 16 min 37 s. A user who wants the speed and not the digits sets ``MKL_CBWR=AUTO``
  (MKL's own choice) before running a command.

With all three pinned, the digits, arithmetic and audio miniatures print the same tables on an AVX2 or AVX-512
CPU (measured: ``make demo`` digit for digit with MKL restricted to AVX2 and its base model pretrained anew),
and on either maker's by Intel's documentation of MKL's reproducible code (no AMD CPU was at hand under the
pin). A GPU run is not affected (its kernels are the GPU's).

The choice is made once per process, at its first CPU kernel: ``run_experiment`` pins it first thing, which
holds in a fresh process (every ``adrpo`` command); a Python session that has already computed with torch
keeps its kernels (its runs then differ from the command's in the last digits): call :func:`pin_cpu_kernels`
before anything else there, as the test suite's ``conftest.py`` does.
"""

from __future__ import annotations

import os
import platform

# torch's, oneDNN's and MKL's variables, each set to code every x86-64 CPU of the last decade runs the same way
KERNELS = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "COMPATIBLE,STRICT"}


def pin_cpu_kernels() -> str:
    """Have this process, and the workers it starts, use the kernels of :data:`KERNELS` in torch, oneDNN and
    MKL; returns torch's kernels in use.

    Only where it can take effect: on x86-64, for each variable not set already (a user's own choice is kept),
    and before this process has run a CPU kernel (the libraries fix their choice at the first one; then the
    variables this call set are taken back, so that workers use what this process uses).
    """
    import torch

    if platform.machine().lower() not in ("x86_64", "amd64"):
        return torch.backends.cpu.get_cpu_capability()
    added = {name: value for name, value in KERNELS.items() if name not in os.environ}
    os.environ.update(added)
    chosen = torch.backends.cpu.get_cpu_capability()
    if chosen.lower() != os.environ["ATEN_CPU_CAPABILITY"].lower():  # chosen before: workers must match this process
        for name in added:
            del os.environ[name]
    return chosen
