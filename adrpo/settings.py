"""Settings plumbing: where adrpo caches what it builds once (pretrained miniatures, converted
GGUF models), cache keys of settings dataclasses, and building dataclasses from YAML mappings."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from adrpo.errors import ConfigError

T = TypeVar("T")


def cache_root() -> Path:
    """``$ADRPO_CACHE``, else ``~/.cache/adrpo``."""
    return Path(os.environ.get("ADRPO_CACHE", Path.home() / ".cache" / "adrpo"))


def settings_key(settings: object, version: int) -> str:
    """A short content hash of a settings dataclass: any change to it gives a new cache entry."""
    blob = json.dumps({"version": version, **dataclasses.asdict(settings)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def from_mapping(cls: type[T], values: Mapping[str, Any], what: str) -> T:
    """``cls(**values)`` for a dataclass, refusing unknown keys by name (e.g. from YAML)."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown {what} field(s) {unknown}; known fields: {sorted(known)}")
    return cls(**values)
