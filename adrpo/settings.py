"""Settings plumbing: where adrpo caches what it builds once (pretrained miniatures, converted
GGUF models), cache keys of settings dataclasses, building dataclasses from YAML mappings,
reading the collapse monitor's policy from YAML (:func:`monitor_policy`), and the paths a YAML names.

Paths in a YAML file (the rule ``adrpo.cli`` documents): what a run *reads* is relative to the
YAML's folder; a file (:func:`path_from_config`) always, a model or dataset that may be a hub id
(:func:`source_from_config`) only when it starts with ``./``, ``../``, ``/`` or ``~`` or exists
there, so ``Qwen/Qwen2.5-0.5B`` stays a hub id. What a run *writes* (``output_dir``) is relative
to the working directory, so that a bundled preset's runs land in ``runs/`` and not in the package;
:func:`check_output_dir` refuses one that cannot be a folder.
"""

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
    """A short content hash of a settings dataclass and of the CPU kernels pretraining runs on (torch's, oneDNN's
    and MKL's: each code path sums floats in another order, see :mod:`adrpo.experiments.cpu_kernels`): any change
    gives a new cache entry."""
    import torch

    kernels = [torch.backends.cpu.get_cpu_capability(), os.environ.get("ONEDNN_MAX_CPU_ISA", ""), os.environ.get("MKL_CBWR", "")]
    blob = json.dumps({"version": version, "cpu_kernels": kernels, **dataclasses.asdict(settings)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def from_mapping(cls: type[T], values: Mapping[str, Any], what: str) -> T:
    """``cls(**values)`` for a dataclass, refusing unknown keys by name (e.g. from YAML)."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown {what} field(s) {unknown}; known fields: {sorted(known)}")
    return cls(**values)


PATH_PREFIXES = ("./", "../", "/", "~")


def path_from_config(value: str, folder: Path) -> str:
    """A file a YAML in ``folder`` names: ``folder / value``; absolute paths (and ``~``) stay."""
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else folder / path)


def source_from_config(value: str, folder: Path) -> str:
    """A model or dataset a YAML in ``folder`` names, which is a local folder or a hub id: a path
    (:func:`path_from_config`) when it starts with one of :data:`PATH_PREFIXES` or exists in ``folder``,
    else ``value`` unchanged (a hub id such as ``Qwen/Qwen2.5-0.5B``)."""
    if value.startswith(PATH_PREFIXES) or (folder / value).exists():
        return path_from_config(value, folder)
    return value


def check_output_dir(value: Any, *, field: str = "output_dir") -> None:
    """Refuse, naming ``field``, an output folder that is a file or cannot be created (a file on the
    way, no write permission); creates nothing."""
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        raise ConfigError(f"{field} must be a folder path, got {value!r}")
    path = Path(value).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ConfigError(f"{field} {str(value)!r} is a file, not a folder")
        if not os.access(path, os.W_OK | os.X_OK):
            raise ConfigError(f"{field} {str(value)!r}: no write permission")
        return
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{field} {str(value)!r} cannot be created: {str(parent)!r} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{field} {str(value)!r} cannot be created: no write permission in {str(parent)!r}")


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
