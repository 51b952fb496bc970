"""Shared by the documentation tests (tests/test_docs_site.py, tests/test_docs_snippets.py) and
tests/test_presets.py: the pages checked, their fenced blocks, and the Makefile's targets."""

from __future__ import annotations

import functools
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
MKDOCS_YML = ROOT / "mkdocs.yml"
API_PACKAGES = ["adrpo.core", "adrpo.flow", "adrpo.llm", "adrpo.rewards", "adrpo.experiments"]
PAGES = sorted(DOCS.rglob("*.md")) + [ROOT / "README.md"]
RESULTS_PAGES = ("results-*.md", "moving-reference.md", "benchmarks.md")

PYTHON, PYCON, SHELL, YAML = ("python", "py"), ("pycon",), ("bash", "sh", "shell"), ("yaml", "yml")
NOT_RUN = ("", "text", "console", "json", "toml")
# The docs build's time on the 2-core CI machine is about 10 s; past this something is wrong (a
# griffe extension importing heavy modules, a plugin fetching from the network).
BUILD_SECONDS_MAX = 120



def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


@functools.cache
def make_targets() -> dict[str, list[str]]:
    """Makefile target -> its recipe lines."""
    targets: dict[str, list[str]] = {}
    current = None
    for line in (ROOT / "Makefile").read_text().splitlines():
        if line.startswith("\t") and current is not None:
            targets[current].append(line.strip())
            continue
        match = re.match(r"^([A-Za-z0-9_-]+)\s*:(?!=)", line)
        current = match.group(1) if match else None
        if current is not None:
            targets[current] = []
    return targets


FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<lang>[\w+-]*)[^`]*$")


def without_blocks(text: str) -> str:
    """The Markdown outside fenced blocks (the blocks' lines blanked, so line numbers stay)."""
    out, fence = [], None
    for line in text.splitlines():
        match = FENCE.match(line)
        if fence is None and match:
            fence = match.group("fence")
            out.append("")
        elif fence is not None:
            if re.match(rf"^\s*{re.escape(fence[0])}{{{len(fence)},}}\s*$", line):
                fence = None
            out.append("")
        else:
            out.append(line)
    return "\n".join(out)
