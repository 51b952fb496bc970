"""A griffe extension: a config dataclass's fields documented from their ``help`` metadata.

adrpo's configs declare each field as TRL's do, ``field(default=..., metadata={"help": "..."})``
(``FlowConfig`` through its ``_help(text, default)`` shorthand, whose text may be an f-string naming
module constants). Static analysis sees neither the text nor the default, so for a ``@dataclass``
whose fields carry help, this extension imports the module, reads ``dataclasses.fields`` of the live
class and

- appends a Google-style ``Parameters:`` section to the class docstring, one entry per field of the
  class itself (not its bases: ``ADRPOConfig`` lists what it adds to TRL's ``GRPOConfig``), so
  mkdocstrings renders a table of name, type, help and default, the way TRL documents GRPOConfig;
- sets each field's value to the default's ``repr`` (``_help(...)`` would otherwise be shown as the
  default in the signature) and marks the field not public, so it is not rendered a second time as
  a member (the table is its documentation).

Loaded by mkdocs.yml (``plugins.mkdocstrings.handlers.python.options.extensions``).
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

import griffe


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


class DataclassHelp(griffe.Extension):
    """Document the fields of config dataclasses from ``metadata["help"]`` (see the module docstring)."""

    def on_class_members(self, *, cls: griffe.Class, **kwargs: Any) -> None:
        if not any(d.callable_path == "dataclasses.dataclass" for d in cls.decorators):
            return
        attributes = {name: m for name, m in cls.members.items() if isinstance(m, griffe.Attribute) and not m.is_alias}
        if not any("help" in str(m.value) for m in attributes.values()):
            return  # a dataclass without help texts: nothing to read at run time
        live = getattr(importlib.import_module(cls.module.path), cls.name)
        own = [f for f in dataclasses.fields(live) if f.name in attributes and "help" in f.metadata]
        entries = []
        for f in own:
            attribute = attributes[f.name]
            default = _default(f)
            if default is not dataclasses.MISSING:
                attribute.value = repr(default)
            attribute.public = False
            text = " ".join(str(f.metadata["help"]).split())
            entries.append(f"    {f.name}: {text}")
        if not entries:
            return
        section = "Parameters:\n" + "\n".join(entries)
        if cls.docstring is None:
            cls.docstring = griffe.Docstring(section, parent=cls)
        else:
            cls.docstring.value = f"{cls.docstring.value.rstrip()}\n\n{section}"
