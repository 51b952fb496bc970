"""A griffe extension: adrpo's reStructuredText habits in docstrings, rendered as Markdown.

adrpo's docstrings are Google style (``Args:``, ``Returns:``) with three reST habits that Markdown
would mangle; before mkdocstrings renders a docstring this extension rewrites

- a Sphinx role, ``:func:`name``` (``:class:``, ``:meth:``, ``:mod:``, ``:data:``, ``:attr:``,
  ``:exc:``, ``:obj:``), into a link to that object's entry in the API reference when the name
  resolves, from the docstring's own scope, to an object the reference renders, and into plain
  code otherwise (a private name, another package such as ``adrpo.tasks`` or ``accelerate``);
- a doctest (``>>>`` lines and their output, up to a blank line) into a ``pycon`` code block, where
  Markdown would read ``>>>`` as quotes and ``[a for a in x]`` followed by a line in brackets as a link;
- a reST literal-block marker, a paragraph ending in ``::``, into ``:`` (the indented block after
  it is already a Markdown code block);

and joins the first paragraph into one line, which mkdocstrings' summary tables show (its first
line alone would stop mid-sentence).

Loaded by mkdocs.yml with the API packages as ``packages``: only what is rendered is linked to.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|data|attr|exc|obj):`~?([^`]+)`")
DOCTEST = re.compile(r"^( *)>>> ")


def _rendered(obj: griffe.Object | griffe.Alias, packages: tuple[str, ...]) -> bool:
    """Whether the API pages (``::: package`` with ``filters: public``) render ``obj``."""
    if not any(obj.path.startswith(p + ".") for p in packages):
        return False  # a package itself is a page (api/<name>.md), not an entry of the reference
    node = obj
    while node is not None and node.path not in packages:
        if node.is_alias or not node.is_public:
            return False
        node = node.parent
    return True


def _target(obj: griffe.Object, name: str, packages: tuple[str, ...]) -> str | None:
    """The path of ``name`` as written in ``obj``'s docstring, if the reference renders it."""
    head, _, rest = name.partition(".")
    try:
        base = obj.resolve(head)
    except griffe.NameResolutionError:
        base = head  # an absolute path such as adrpo.flow.trainer.FlowTrainer
    path = f"{base}.{rest}" if rest else base
    try:
        target = obj.modules_collection[path]
    except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
        return None
    if target.is_alias:
        try:
            target = target.final_target
        except (griffe.AliasResolutionError, griffe.CyclicAliasError):
            return None
    return target.path if _rendered(target, packages) else None


def _fence_doctests(text: str) -> str:
    lines, out, i = text.splitlines(), [], 0
    while i < len(lines):
        match = DOCTEST.match(lines[i])
        if match is None:
            out.append(lines[i])
            i += 1
            continue
        indent, block = match.group(1), []
        while i < len(lines) and lines[i].strip():
            block.append(lines[i])
            i += 1
        out += [f"{indent}```pycon", *block, f"{indent}```"]
    return "\n".join(out)


def _unwrap_summary(text: str) -> str:
    """The first paragraph on one line: mkdocstrings' summary tables show a docstring's first line."""
    first, sep, rest = text.partition("\n\n")
    lines = first.splitlines()
    if any(DOCTEST.match(line) or line.startswith((" ", "-", "*")) or line.rstrip().endswith(":") for line in lines):
        return text  # a list, a doctest, an indented block or a section: left as written
    return " ".join(line.strip() for line in lines) + sep + rest


def rewrite(text: str, link: Any) -> str:
    """``text`` with roles through ``link(name) -> markdown``, doctests fenced, ``::`` markers made ``:``,
    the first paragraph on one line."""
    text = _unwrap_summary(ROLE.sub(lambda m: link(m.group(1)), text))
    text = re.sub(r"(\S)::\n(\s*\n)", r"\1:\n\2", text)
    text = re.sub(r"^( *)::\n", r"\n", text, flags=re.M)
    return _fence_doctests(text)


class DocstringMarkup(griffe.Extension):
    """Rewrite the docstrings of ``packages``' objects (see the module docstring)."""

    def __init__(self, packages: list[str]) -> None:
        super().__init__()
        self.packages = tuple(packages)

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        seen: set[int] = set()
        stack: list[griffe.Object] = [pkg]
        while stack:
            obj = stack.pop()
            stack += [m for m in obj.members.values() if not m.is_alias]
            if obj.docstring is None or id(obj.docstring) in seen:
                continue
            seen.add(id(obj.docstring))

            def link(name: str, obj: griffe.Object = obj) -> str:
                path = _target(obj, name, self.packages)
                return f"[`{name}`][{path}]" if path else f"`{name}`"

            obj.docstring.value = rewrite(obj.docstring.value, link)
