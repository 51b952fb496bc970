"""One family of CPU kernels for every experiment, so that its tables reproduce on any x86-64 CPU.

torch picks its vectorised CPU kernels (softmax, log-softmax, layer norm, reductions, ...) by the widest
instruction set the CPU has, AVX2 or AVX-512 on x86-64, and so does oneDNN, which computes its
convolutions (the audio encoder's). The two sum floats in different orders, so a model pretrained and
trained on an AVX-512 CPU ends a few last digits away from the same run on an AVX2 CPU, and through
sampling the miniatures' tables move: measured, ``make llm-demo``'s base accuracy 0.2125 on AVX-512 against
0.221 ± 0.011 on AVX2, ``make demo``'s Flow-DPO 0.834 ± 0.016 against 0.840 ± 0.008, ``make audio-demo``'s
base 0.583 ± 0.020 against 0.589 ± 0.027 (with torch's AVX2 kernels but oneDNN's AVX-512 ones). With
both on AVX2 (``ATEN_CPU_CAPABILITY=avx2``, ``ONEDNN_MAX_CPU_ISA=AVX2``) the AVX-512 machine printed the
AVX2 machine's tables digit for digit. A GPU run is not affected (its kernels are the GPU's).

The choice is made once per process, at its first CPU kernel: ``run_experiment`` pins it first thing, which
holds in a fresh process (every ``adrpo`` command); a Python session that has already computed with torch
keeps its kernels (its runs then differ from the command's in the last digits on an AVX-512 CPU): call
:func:`pin_cpu_kernels` before anything else there, as the test suite's ``conftest.py`` does.
"""

from __future__ import annotations

import os
import platform

# the widest kernels every x86-64 CPU of the last decade has, as torch's and oneDNN's variables name them
KERNELS = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def pin_cpu_kernels() -> str:
    """Have this process, and the workers it starts, use AVX2 CPU kernels in torch and oneDNN; returns torch's
    kernels in use.

    Only where it can take effect: on x86-64, when neither variable is set already (a user's own choice is
    kept), and before this process has run a CPU kernel (torch and oneDNN fix their choice at the first one;
    then the variables are taken back, so that workers use what this process uses).
    """
    import torch

    if platform.machine().lower() not in ("x86_64", "amd64") or any(name in os.environ for name in KERNELS):
        return torch.backends.cpu.get_cpu_capability()
    os.environ.update(KERNELS)
    chosen = torch.backends.cpu.get_cpu_capability()
    if chosen.lower() != KERNELS["ATEN_CPU_CAPABILITY"]:  # chosen before (or no AVX2): workers must match this process
        for name in KERNELS:
            del os.environ[name]
    return chosen
