"""Settings plumbing: where adrpo caches what it builds once (pretrained miniatures, converted
GGUF models), cache keys of settings dataclasses, building dataclasses from YAML mappings, and
reading the collapse monitor's policy from YAML (:func:`monitor_policy`)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from adrpo.core.monitor import POLICIES
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


def monitor_policy(value: Any, *, field: str = "monitor") -> str:
    """The collapse monitor's policy, one of :data:`adrpo.core.monitor.POLICIES`, from a YAML value.

    YAML 1.1 reads an unquoted ``off`` / ``no`` / ``false`` as ``False`` and ``on`` / ``yes`` / ``true``
    as ``True``: ``False`` is "off", ``True`` is "warn" (the monitor on, with its default policy).
    Anything else must be a policy name; the error names ``field``.
    """
    if value is False:
        return "off"
    if value is True:
        return "warn"
    if value not in POLICIES:
        raise ConfigError(f"{field} must be one of {POLICIES}, got {value!r} (YAML booleans also work: false = off, true = warn)")
    return value
