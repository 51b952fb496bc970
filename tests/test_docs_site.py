"""The documentation site: it builds strictly, every link resolves, the API reference is complete
(the snippets: tests/test_docs_snippets.py). docs/conventions-docs.md tells contributors the same rules.

The build. ``mkdocs build --strict`` (what ``make docs`` runs) writes the site into a temporary
folder once per session; a warning (a page missing from the nav, a link to a missing page or
anchor, a docstring that does not render) fails it.

Links. Every relative ``<a href>``, ``<img src>``, ``<link href>`` and ``<script src>`` of the built
site resolves to a file in it, and a ``#fragment`` to an id in the target page; external links are
listed, not fetched. README.md's relative links and images resolve to files of the repository, and
its ``#anchors`` to headings (GitHub's anchors).

API reference. Every public name (not starting with ``_``, or listed in ``__all__`` where a module has
one) defined at the top level of a module of the packages the API pages render, and each public
member of their classes, is an entry of the built site's ``objects.inv``; a config dataclass's fields
are rows of its Parameters table with their help text.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import html
import importlib
import os
import re
import subprocess
import sys
import time
import zlib
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

import pytest
import yaml
from docs_pages import API_PACKAGES, BUILD_SECONDS_MAX, DOCS, MKDOCS_YML, ROOT, make_targets, rel, without_blocks

# --- the build ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def site(tmp_path_factory) -> Path:
    """The site built by ``mkdocs build --strict`` into a temporary folder."""
    folder = tmp_path_factory.mktemp("site")
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(folder)], cwd=ROOT,
                            capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"}, timeout=600)
    seconds = time.perf_counter() - start
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    assert seconds < BUILD_SECONDS_MAX, f"the docs build took {seconds:.0f} s"
    assert not re.search(r"^(WARNING|ERROR)", result.stderr, re.M), result.stderr
    return folder


def test_make_docs_runs_the_strict_build():
    recipe = make_targets()["docs"]
    assert any(re.search(r"/mkdocs build --strict --site-dir site$", line) for line in recipe), recipe
    assert "site/" in (ROOT / ".gitignore").read_text().splitlines()
    assert yaml.safe_load(MKDOCS_YML.read_text())["docs_dir"] == "docs"


def test_every_page_is_built(site):
    pages = [p.relative_to(DOCS) for p in DOCS.rglob("*.md")]
    assert (DOCS / "index.md") in [DOCS / p for p in pages]
    for page in pages:
        built = site / (page.parent if page.name == "index.md" else page.with_suffix("")) / "index.html"
        assert built.is_file(), f"{page} was not built ({built})"
    assert (site / "objects.inv").is_file()
    assert (site / "search" / "search_index.json").is_file()


# --- links -----------------------------------------------------------------------------------------


class Page(HTMLParser):
    """The ids and the links (tag, attribute value) of one HTML page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.ids: set[str] = set()
        self.links: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        for key in ("id", "name") if tag == "a" else ("id",):
            if values.get(key):
                self.ids.add(values[key])
        attribute = {"a": "href", "link": "href", "img": "src", "script": "src"}.get(tag)
        if attribute and values.get(attribute) is not None:
            self.links.append((tag, values[attribute]))


@functools.cache
def parse_page(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def broken_links(site: Path) -> tuple[list[str], set[str]]:
    """(the site's broken relative links, its external links)."""
    broken, external = [], set()
    for path in sorted(site.rglob("*.html")):
        base = "http://site/" + path.relative_to(site).as_posix()
        for tag, link in parse_page(path).links:
            parts = urlsplit(link)
            if parts.scheme in ("http", "https", "mailto") and parts.netloc != "site":
                external.add(link)
                continue
            if parts.scheme in ("data", "javascript") or link in ("", "#"):
                continue
            target = urlsplit(urljoin(base, link))
            file = site / unquote(target.path).lstrip("/")
            if file.is_dir() or target.path.endswith("/"):
                file = file / "index.html"
            where = f"{path.relative_to(site)}: <{tag}> {link}"
            if not file.is_file():
                broken.append(f"{where}: no file {file.relative_to(site)}")
            elif target.fragment and file.suffix == ".html" and unquote(target.fragment) not in parse_page(file).ids:
                broken.append(f"{where}: no id {target.fragment!r} in {file.relative_to(site)}")
    return broken, external


def test_every_link_of_the_site_resolves(site):
    broken, external = broken_links(site)
    assert not broken, "broken links:\n" + "\n".join(broken)
    print("external links (not fetched):\n" + "\n".join(sorted(external)))
    pages = list(site.rglob("*.html"))
    images = [link for p in pages for tag, link in parse_page(p).links if tag == "img"]
    assert len(pages) >= 20 and images, "the site has fewer pages than the nav, or no image: the checker read nothing"


def test_link_checker_finds_broken_links(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "index.html").write_text('<h1 id="top">A</h1><a href="../b/#top">ok</a><a href="../b/#nope">x</a>'
                                              '<img src="../plot.png"><a href="https://example.org">e</a><a href="../c/">y</a>')
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "index.html").write_text('<a id="top"></a><a href="../a/#top">ok</a><img src="../missing.png">')
    (tmp_path / "plot.png").write_bytes(b"png")
    parse_page.cache_clear()
    broken, external = broken_links(tmp_path)
    parse_page.cache_clear()
    assert external == {"https://example.org"}
    assert broken == ["a/index.html: <a> ../b/#nope: no id 'nope' in b/index.html", "a/index.html: <a> ../c/: no file c/index.html",
                      "b/index.html: <img> ../missing.png: no file missing.png"]


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*|__|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(markdown: Path) -> set[str]:
    headings = [m.group(1) for m in re.finditer(r"^#{1,6} +(.+?)\s*#*$", without_blocks(markdown.read_text()), re.M)]
    seen: dict[str, int] = {}
    out = set()
    for heading in headings:
        anchor = github_anchor(heading)
        out.add(anchor if anchor not in seen else f"{anchor}-{seen[anchor]}")
        seen[anchor] = seen.get(anchor, 0) + 1
    return out


def test_readme_links_resolve():
    readme = ROOT / "README.md"
    text = without_blocks(readme.read_text())
    links = [m.group(1) for m in re.finditer(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", text)]
    links += re.findall(r"<img[^>]+src=\"([^\"]+)\"", text)
    problems = []
    for link in links:
        parts = urlsplit(link)
        if parts.scheme:
            continue
        target = (ROOT / unquote(parts.path)) if parts.path else readme
        if not target.exists():
            problems.append(f"{link}: no file {rel(target) if target.is_relative_to(ROOT) else target}")
        elif parts.fragment and target.suffix == ".md" and parts.fragment not in anchors(target):
            problems.append(f"{link}: no heading with anchor #{parts.fragment} in {rel(target)}")
    assert not problems, "README.md links that do not resolve:\n" + "\n".join(problems)


def test_github_anchors():
    assert github_anchor("The moving reference — `make moving` (216 runs, 8 min 55 s)") == "the-moving-reference--make-moving-216-runs-8-min-55-s"
    assert github_anchor("Using it") == "using-it"


# --- the API reference ------------------------------------------------------------------------------


@functools.cache
def inventory(site: Path) -> set[str]:
    """The names of the objects the API pages render (priority-1 entries of objects.inv)."""
    data = (site / "objects.inv").read_bytes()
    lines = zlib.decompress(data.split(b"\n", 4)[4]).decode().splitlines()
    return {line.split(" ")[0] for line in lines if line.split(" ")[2] == "1"}


def modules(package: str) -> list[tuple[str, Path]]:
    folder = ROOT / package.replace(".", "/")
    paths = sorted(folder.rglob("*.py"))
    found = []
    for path in paths:
        parts = path.relative_to(ROOT).with_suffix("").parts
        if any(p.startswith("_") and p != "__init__" for p in parts):
            continue
        found.append((".".join(parts[:-1] if parts[-1] == "__init__" else parts), path))
    return found


def defined_names(body: list[ast.stmt]) -> list[tuple[str, ast.stmt]]:
    """Names a module or class body defines (top level, and in top-level if / try blocks)."""
    out = []
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.append((node.name, node))
        elif isinstance(node, ast.Assign):
            out += [(t.id, node) for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            out.append((node.target.id, node))
        elif isinstance(node, (ast.If, ast.Try)):
            out += defined_names(node.body + node.orelse + [s for h in getattr(node, "handlers", []) for s in h.body])
    return out


def public_api(package: str) -> list[str]:
    """Dotted paths of the public names the API reference must show for ``package``."""
    names = []
    for module, path in modules(package):
        tree = ast.parse(path.read_text())
        if module != package:  # the package itself is its page, api/<name>.md
            names.append(module)
        exported = next((ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
                         and any(isinstance(t, ast.Name) and t.id == "__all__" for t in n.targets)), None)
        for name, node in defined_names(tree.body):
            if name.startswith("_") or (exported is not None and name not in exported):
                continue
            names.append(f"{module}.{name}")
            if isinstance(node, ast.ClassDef):
                for member, child in defined_names(node.body):
                    help_field = isinstance(child, ast.AnnAssign) and child.value is not None and "help" in ast.unparse(child.value)
                    if not member.startswith("_") and not help_field:  # help fields: the Parameters table
                        names.append(f"{module}.{name}.{member}")
    return names


def test_api_pages_render_the_packages_asked_for():
    plugins = yaml.safe_load(MKDOCS_YML.read_text())["plugins"]
    options = next(p["mkdocstrings"] for p in plugins if isinstance(p, dict) and "mkdocstrings" in p)["handlers"]["python"]["options"]
    markup = next(e for e in options["extensions"] if isinstance(e, dict))
    assert list(markup.values())[0]["packages"] == API_PACKAGES
    for package in API_PACKAGES:
        page = DOCS / "api" / f"{package.split('.')[-1]}.md"
        assert re.search(rf"^::: {re.escape(package)}$", page.read_text(), re.M), f"{rel(page)} has no `::: {package}` directive"


@pytest.mark.parametrize("package", API_PACKAGES)
def test_api_reference_covers_every_public_name(site, package):
    names = public_api(package)
    assert len(names) > 5, f"found {len(names)} public names in {package}: the scan is broken"
    missing = [name for name in names if name not in inventory(site)]
    assert not missing, f"public names of {package} without an entry in the API reference: {missing}"


@pytest.mark.parametrize(("page", "config"), [("flow", "adrpo.flow.config.FlowConfig"), ("llm", "adrpo.llm.config.ADRPOConfig")])
def test_config_fields_are_documented_from_their_help(site, page, config):
    module, _, name = config.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    own = [f for f in dataclasses.fields(cls) if f.name in cls.__dict__.get("__annotations__", {})]
    assert own and all("help" in f.metadata for f in own)
    source = (site / "api" / page / "index.html").read_text()
    section = source[source.index(f'id="{config}"'):]
    section = section[: section.index("</table>")]
    rows = {cells[0]: cells for cells in ([text_of(c) for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
                                          for row in re.findall(r"<tr[^>]*>(.*?)</tr>", section, re.S)) if cells}
    for f in own:
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        assert f.name in rows, f"{config}.{f.name}: no row in the Parameters table of api/{page}"
        _, annotation, description, shown_default = rows[f.name]
        expected = (f.type, text_of(f.metadata["help"]).replace("`", ""), repr(default))  # `x` in a help text renders as code
        assert (annotation, description, shown_default) == expected, f"{config}.{f.name}"


def text_of(fragment: str) -> str:
    """The text of an HTML fragment, whitespace collapsed."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", "", fragment)).split())

