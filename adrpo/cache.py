"""Where adrpo caches what it builds once: pretrained miniatures, converted GGUF models."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$ADRPO_CACHE``, else ``~/.cache/adrpo``."""
    return Path(os.environ.get("ADRPO_CACHE", Path.home() / ".cache" / "adrpo"))
