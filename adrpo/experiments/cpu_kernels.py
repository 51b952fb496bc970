"""One family of CPU kernels for every experiment, so that its tables reproduce on any x86-64 CPU.

torch picks its vectorised CPU kernels (softmax, log-softmax, layer norm, reductions, ...) by the widest
instruction set the CPU has: AVX2 or AVX-512 on x86-64. The two sum floats in different orders, so a model
pretrained and trained on an AVX-512 CPU ends a few last digits away from the same run on an AVX2 CPU, and
through sampling the miniatures' tables move: measured, ``make llm-demo``'s base accuracy 0.2125 on AVX-512
against 0.221 ± 0.011 on AVX2, ``make demo``'s Flow-DPO 0.834 ± 0.016 against 0.840 ± 0.008. With the AVX2
kernels on both (``ATEN_CPU_CAPABILITY=avx2``), the AVX-512 machine printed the AVX2 machine's tables digit
for digit. A GPU run is not affected (its kernels are the GPU's).
"""

from __future__ import annotations

import os
import platform

CAPABILITY = "avx2"  # the widest kernels every x86-64 CPU of the last decade has


def pin_cpu_kernels() -> str:
    """Have this process, and the workers it starts, use torch's AVX2 CPU kernels; returns the kernels in use.

    Only where it can take effect: on x86-64, when ``ATEN_CPU_CAPABILITY`` is not set already (a user's own
    choice is kept), and before this process has run a CPU kernel (torch fixes its choice at the first one;
    then the variable is taken back, so that workers use what this process uses).
    """
    import torch

    if platform.machine().lower() not in ("x86_64", "amd64") or "ATEN_CPU_CAPABILITY" in os.environ:
        return torch.backends.cpu.get_cpu_capability()
    os.environ["ATEN_CPU_CAPABILITY"] = CAPABILITY
    chosen = torch.backends.cpu.get_cpu_capability()
    if chosen.lower() != CAPABILITY:  # chosen before (or a CPU without AVX2): the workers must match this process
        del os.environ["ATEN_CPU_CAPABILITY"]
    return chosen
