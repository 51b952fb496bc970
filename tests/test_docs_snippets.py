"""The documentation's snippets and the commands it names (the site itself: tests/test_docs_site.py).

Snippets, in every ``docs/**/*.md`` page and ``README.md``:

- a ``python`` block runs, in a fresh namespace with a temporary working directory; a ``pycon``
  block runs as a doctest (its printed output must match);
- a ``bash`` / ``sh`` / ``shell`` block must parse (``bash -n``), and is not run: each command in it
  that runs adrpo (``adrpo ...``, ``python -m adrpo.cli ...``, ``accelerate launch ... -m adrpo.cli
  ...``) is parsed by adrpo's own argument parser (:func:`adrpo.cli.build_parser`, ``parse_args``
  only), its ``--preset`` must be a bundled preset of that command's kind and its ``--set`` values
  ``key=value``; each ``make`` command must name Makefile targets. Commands that need a GPU, the hub
  or hours are checked the same way, which is all a CPU can check of them. ``<name>``, ``...`` and
  (after ``make``) ``X`` are placeholders; a usage bracket, ``[--resume | --overwrite]``, is parsed
  with each of its choices and without it;
- a ``yaml`` block must load with the CLI's YAML loader (a safe loader);
- a ``python`` block preceded by ``<!-- stand-ins: NAME -->`` (the last non-blank line before its
  fence) runs with the user objects of :data:`STAND_INS` ``[NAME]`` in its namespace and its heavy
  settings shrunk to the tests' tiny models (``flow``: the MLP velocity model, 2 steps; ``llm``: a tiny
  Qwen2 in place of a hub id, 1 step), so a guide's example that needs your model or the hub still runs;
- a block preceded by ``<!-- no-test: reason -->`` is skipped with that reason; the reason is required;
- a fence without a language, or ``text`` / ``console`` / ``json`` / ``toml``, is not run; any other
  language fails (a typo such as ``pyhton`` would otherwise hide a snippet from these tests).

Commands named anywhere in code (inline `` `...` `` or blocks) must exist: ``make X`` a Makefile
target, ``adrpo ...`` a command the parser accepts (inline, a command's leading words alone, such
as `` `adrpo fm` ``, are fine), ``--preset NAME`` a bundled preset. A results table (any table on
``results-*.md``, ``moving-reference.md`` and ``benchmarks.md``, and any table with a mean ± std
cell anywhere) must name the command that printed it in its section: ``make X``, an ``adrpo``
command or a ``benchmarks/*.py`` script, between the section's heading (level 1 or 2) and the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import doctest
import io
import re
import shlex
import subprocess
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import pytest
import yaml
from docs_pages import DOCS, FENCE, NOT_RUN, PAGES, PYCON, PYTHON, RESULTS_PAGES, SHELL, YAML, make_targets, rel, without_blocks

from adrpo import cli
from adrpo.errors import ConfigError
from conftest import target_reward, tiny_model

# --- fenced blocks --------------------------------------------------------------------------------


MARKER = re.compile(r"^\s*<!--\s*no-test\b:?\s*(?P<reason>.*?)\s*-->\s*$")
STAND_INS_MARKER = re.compile(r"^\s*<!--\s*stand-ins:\s*(?P<name>[\w-]+)\s*-->\s*$")


@dataclasses.dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    skip: str | None  # the no-test marker's reason ("" when the marker gives none)
    stand_ins: str | None = None  # the stand-ins marker's name: the snippet runs on STAND_INS[name]

    def __str__(self) -> str:
        return f"{rel(self.path)}:{self.line}"


def fenced_blocks(path: Path) -> list[Block]:
    """Every fenced code block of a Markdown file, with the no-test marker before it, if any."""
    blocks, lines, i = [], path.read_text().splitlines(), 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if match is None:
            i += 1
            continue
        indent, fence = len(match.group("indent")), match.group("fence")
        before = next((line for line in reversed(lines[:i]) if line.strip()), "")
        marker, stand_ins = MARKER.match(before), STAND_INS_MARKER.match(before)
        body, j = [], i + 1
        while j < len(lines) and not re.match(rf"^\s*{re.escape(fence[0])}{{{len(fence)},}}\s*$", lines[j]):
            body.append(lines[j][indent:] if lines[j][:indent].strip() == "" else lines[j])
            j += 1
        blocks.append(Block(path, i + 1, match.group("lang").lower(), "\n".join(body) + "\n", marker.group("reason") if marker else None,
                            stand_ins.group("name") if stand_ins else None))
        i = j + 1
    return blocks


BLOCKS = [block for page in PAGES for block in fenced_blocks(page)]


def blocks_of(langs: tuple[str, ...]):
    chosen = [b for b in BLOCKS if b.lang in langs]
    return pytest.mark.parametrize("block", chosen, ids=[str(b) for b in chosen])


def skip_if_marked(block: Block) -> None:
    if block.skip is not None:
        assert block.skip, f"{block}: a no-test marker needs a reason: <!-- no-test: why -->"
        pytest.skip(f"no-test: {block.skip}")


def test_every_block_has_a_known_language():
    known = PYTHON + PYCON + SHELL + YAML + NOT_RUN
    unknown = [f"{b} ({b.lang})" for b in BLOCKS if b.lang not in known]
    assert not unknown, f"fences with a language these tests do not know (use one of {known}): {unknown}"
    assert [b for b in BLOCKS if b.lang in PYTHON], "no python block found: the fence parser is broken"
    assert [b for b in BLOCKS if b.lang in SHELL], "no shell block found: the fence parser is broken"


def test_no_test_markers_give_a_reason():
    empty = [str(b) for b in BLOCKS if b.skip == ""]
    assert not empty, f"no-test markers without a reason (write <!-- no-test: why -->): {empty}"


def test_fence_parser(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("text\n\n<!-- no-test: needs a GPU -->\n\n```python\nx = 1\n```\n\n- item\n\n    ```bash\n    make demo\n    ```\n\n"
                    "````\n```python\nnot a block\n```\n````\n")
    blocks = fenced_blocks(page)
    assert [(b.line, b.lang, b.code, b.skip) for b in blocks] == [
        (5, "python", "x = 1\n", "needs a GPU"), (11, "bash", "make demo\n", None), (15, "", "```python\nnot a block\n```\n", None)]


def flow_stand_ins(monkeypatch, tmp_path) -> dict[str, Any]:
    """The flow guide's user objects on the tests' stand-ins: ``model`` the tiny MLP velocity model,
    ``reward_fn`` the analytic reward, ``train_prompts``, ``embed`` and ``my_eval`` (conftest.py); every
    ``FlowConfig`` the snippet makes runs 2 steps of 2 prompts × 4 samples with 4 sampling steps."""
    import adrpo.flow.config

    real = adrpo.flow.config.FlowConfig
    tiny_run = dict(prompts_per_step=2, group_size=4, sampling_steps=4, num_steps=2, checkpoint_steps=0, report_to=["none"],
                    progress_bar=False)
    monkeypatch.setattr(adrpo.flow.config, "FlowConfig", lambda **values: real(**{**values, **tiny_run}))
    return {"model": tiny_model(), "reward_fn": target_reward, "train_prompts": ["a x", "b y"], "embed": lambda x: x,
            "my_eval": lambda trainer: {"probe": 1.0}}


def llm_stand_ins(monkeypatch, tmp_path) -> dict[str, Any]:
    """The language guide's user objects on the tests' stand-ins: a hub model id loads a tiny Qwen2 saved to
    ``tmp_path`` instead, ``my_reward`` scores completions by length, ``ds`` holds 8 prompts; every
    ``ADRPOConfig`` the snippet makes runs 1 step of 4 prompts × 2 completions on the CPU, fp32."""
    from datasets import Dataset

    import adrpo.llm.config
    import adrpo.llm.trainer
    from adrpo.llm.tiny import char_tokenizer, save_model_and_tokenizer, tiny_causal_lm

    tokenizer = char_tokenizer(list("0123456789+="))
    path = save_model_and_tokenizer(tiny_causal_lm("qwen2", len(tokenizer), hidden=16, layers=1, heads=2), tokenizer, tmp_path / "tiny")
    real_config, real_trainer = adrpo.llm.config.ADRPOConfig, adrpo.llm.trainer.ADRPOTrainer
    tiny_run = dict(bf16=False, activation_checkpointing=False, use_cpu=True, report_to="none", save_strategy="no", disable_tqdm=True,
                    max_steps=1, per_device_train_batch_size=4, num_generations=2, max_completion_length=4)

    class TinyADRPOTrainer(real_trainer):
        def __init__(self, model, *args, **kwargs):
            super().__init__(str(path) if isinstance(model, str) else model, *args, **kwargs)

    monkeypatch.setattr(adrpo.llm.config, "ADRPOConfig", lambda **values: real_config(**{**values, **tiny_run}))
    monkeypatch.setattr(adrpo.llm.trainer, "ADRPOTrainer", TinyADRPOTrainer)
    return {"my_reward": lambda completions, **kwargs: [float(len(c)) for c in completions],
            "ds": Dataset.from_list([{"prompt": f"{i}+{i}="} for i in range(8)])}


STAND_INS = {"flow": flow_stand_ins, "llm": llm_stand_ins}


def test_stand_in_markers_name_a_stand_in():
    unknown = [f"{b} ({b.stand_ins})" for b in BLOCKS if b.stand_ins is not None and b.stand_ins not in STAND_INS]
    assert not unknown, f"stand-ins markers naming no stand-in (known: {list(STAND_INS)}): {unknown}"


@blocks_of(PYTHON + PYCON)
def test_python_snippet(block, tmp_path, monkeypatch):
    skip_if_marked(block)
    monkeypatch.chdir(tmp_path)
    if block.lang in PYTHON:
        names = {} if block.stand_ins is None else STAND_INS[block.stand_ins](monkeypatch, tmp_path)
        exec(compile(block.code, str(block), "exec"), {"__name__": "__snippet__", **names})  # noqa: S102 - the docs' own snippets
        return
    test = doctest.DocTestParser().get_doctest(block.code, {}, str(block), str(block.path), block.line)
    assert test.examples, f"{block}: a pycon block without >>> lines"
    runner, out = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE), io.StringIO()
    runner.run(test, out=out.write)
    assert runner.failures == 0, out.getvalue()


@blocks_of(YAML)
def test_yaml_snippet(block):
    skip_if_marked(block)
    documents = list(yaml.load_all(block.code, Loader=cli.YamlLoader))  # noqa: S506 - a SafeLoader subclass
    assert documents and all(d is not None for d in documents), f"{block}: an empty YAML block"


@blocks_of(SHELL)
def test_shell_snippet(block):
    skip_if_marked(block)
    syntax = subprocess.run(["bash", "-n"], input=block.code, capture_output=True, text=True)
    assert syntax.returncode == 0, f"{block}: bash -n: {syntax.stderr}"
    for line, command in shell_commands(block.code):
        check_command(command, f"{block.path.name}:{block.line + line}")


# --- commands: adrpo and make ---------------------------------------------------------------------


PLACEHOLDER = re.compile(r"<([A-Za-z_][\w.-]*)>")
USAGE = re.compile(r"\[\s*(-[^\[\]]*)\]")  # [--resume | --overwrite]
SEPARATORS = {"&&", "||", ";", "|", "&", "(", ")", "{", "}"}
REDIRECTS = {">", ">>", "<", ">&", "&>", ">|", "<<", "<<<"}
MAKE_OPTIONS_WITH_VALUE = {"-C", "-f", "-j", "-o", "-W", "-I"}


def usage_variants(line: str) -> list[str]:
    """A command line with a usage bracket ``[-a | -b]`` -> the line without it and with each choice."""
    match = USAGE.search(line)
    if match is None:
        return [line]
    choices = [""] + [c.strip() for c in match.group(1).split("|")]
    return [v for choice in choices for v in usage_variants(line[: match.start()] + choice + line[match.end():])]


def words(line: str) -> list[list[str]]:
    """The simple commands of one shell line, as word lists (comments, redirections, env assignments dropped)."""
    line = PLACEHOLDER.sub(r"⟨\1⟩", line)  # `--checkpoint <output_dir>/x`, `adrpo <command>`: placeholders, not redirections
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        tokens = list(lexer)
    except ValueError:  # an unbalanced quote: bash -n reports it
        return []
    commands, current = [], []
    for token in tokens + [";"]:
        if token in SEPARATORS:
            commands.append(current)
            current = []
        else:
            current.append(token)
    result = []
    for command in commands:
        cut = next((i for i, t in enumerate(command) if t in REDIRECTS), len(command))
        command = command[:cut - 1] if cut < len(command) and cut > 0 and command[cut - 1].isdigit() else command[:cut]
        while command and (re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", command[0]) or command[0] in ("time", "nohup", "env")):
            command = command[1:]
        if command:
            result.append(command)
    return result


def shell_commands(code: str) -> list[tuple[int, list[str]]]:
    """(line offset in the block, words) of every simple command of a shell block, usage brackets expanded."""
    out, lines, i = [], code.splitlines(), 0
    while i < len(lines):
        start, line = i, lines[i]
        while line.endswith("\\") and i + 1 < len(lines):
            i += 1
            line = line[:-1] + " " + lines[i].strip()
        i += 1
        for variant in usage_variants(line):
            out += [(start + 1, command) for command in words(variant)]
    return out


def adrpo_argv(command: list[str]) -> list[str] | None:
    """The arguments given to adrpo's CLI by a command, or None when it does not run it."""
    if Path(command[0]).name == "adrpo":
        return command[1:]
    if "-m" in command[:-1] and command[command.index("-m") + 1] == "adrpo.cli":
        return command[command.index("-m") + 2:]
    return None


def parse(argv: list[str]) -> tuple[argparse.Namespace | None, str | None]:
    """(namespace, None) when adrpo's parser accepts ``argv``; (None, its error) when it refuses it; (None, None) for --help."""
    err = io.StringIO()
    try:
        with redirect_stderr(err), redirect_stdout(io.StringIO()):
            return cli.build_parser().parse_args(argv), None
    except SystemExit as exit_:
        return None, (err.getvalue().strip().splitlines() or ["?"])[-1] if exit_.code else None


def check_adrpo(argv: list[str], where: str, *, prefix_ok: bool = False) -> None:
    """``adrpo ARGV`` parses (parse_args only) and names a bundled preset of its command's kind.

    With ``prefix_ok`` (a command named in prose), leading subcommand words alone are enough."""
    first_option = next((i for i, a in enumerate(argv) if a.startswith("-")), len(argv))
    placeholder = next((i for i, a in enumerate(argv[:first_option]) if a.startswith("⟨") or a in ("...", "…")), None)
    if placeholder is not None:  # `adrpo <command> --help`: the words before the placeholder must be a command's
        argv, prefix_ok = argv[:placeholder], True
    args, refusal = parse(argv)
    if args is None and refusal is None:  # --help
        return
    if args is None and prefix_ok and not any(a.startswith("-") for a in argv) and parse([*argv, "--help"]) == (None, None):
        return
    if args is None:
        pytest.fail(f"{where}: `adrpo {shlex.join(argv)}` is refused by adrpo's parser: {refusal}")
    if getattr(args, "preset", None) is not None and "⟨" not in args.preset:
        try:
            cli.preset_path(args.preset, args.preset_kinds)
        except ConfigError as error:
            pytest.fail(f"{where}: `adrpo {shlex.join(argv)}`: {error}")
    try:
        cli.apply_overrides({}, getattr(args, "set", []))
    except ConfigError as error:
        pytest.fail(f"{where}: `adrpo {shlex.join(argv)}`: {error}")


def check_command(command: list[str], where: str, *, prefix_ok: bool = False) -> None:
    argv = adrpo_argv(command)
    if argv is not None:
        check_adrpo(argv, where, prefix_ok=prefix_ok)
    elif Path(command[0]).name == "make":
        rest, targets = command[1:], []
        while rest:
            word, rest = rest[0], rest[1:]
            if word in MAKE_OPTIONS_WITH_VALUE:
                rest = rest[1:]
            elif not (word.startswith("-") or "=" in word or re.fullmatch(r"[A-Z][A-Z0-9_]*|\.\.\.|…|⟨.*⟩", word)):
                targets.append(word)  # `make X`, `make ...`, `make <target>`: placeholders
        unknown = [t for t in targets if t not in make_targets()]
        assert not unknown, f"{where}: `{shlex.join(command)}` names no Makefile target {unknown}; targets: {sorted(make_targets())}"


def test_command_checks_catch_what_they_should():
    assert [c for _, c in shell_commands("FOO=1 adrpo fm train --preset digits-train [--resume | --overwrite]  # one run\n")] == [
        ["adrpo", "fm", "train", "--preset", "digits-train"], ["adrpo", "fm", "train", "--preset", "digits-train", "--resume"],
        ["adrpo", "fm", "train", "--preset", "digits-train", "--overwrite"]]
    assert [c for _, c in shell_commands("accelerate launch --config_file a.yaml -m adrpo.cli grpo train \\\n  --preset x 2>&1 | tee log\n")] == [
        ["accelerate", "launch", "--config_file", "a.yaml", "-m", "adrpo.cli", "grpo", "train", "--preset", "x"], ["tee", "log"]]
    check_command(["make", "clean", "test", "demo"], "ok")
    check_command(["adrpo", "sweep", "--preset", "digits-sweep", "--set", "trainer.num_steps=5"], "ok")
    check_command(["adrpo", "fm"], "ok", prefix_ok=True)
    for line in ("adrpo <command> --help", "adrpo ...", "make X", "make <target>",
                 "adrpo fm export --preset <name> --checkpoint <output_dir>/checkpoints/step-1 --output OUT"):
        [command] = words(line)
        check_command(command, "ok")
    with pytest.raises(pytest.fail.Exception):
        check_command(words("adrpo fmm <command>")[0], "bad")
    for bad in (["make", "demos"], ["adrpo", "fm", "compare", "--preset", "no-such-preset"], ["adrpo", "sweep", "--preset", "grpo-smollm2"],
                ["adrpo", "fm", "train", "--sets", "x=1"], ["adrpo", "fm", "compare", "--preset", "digits-quick", "--set", "seeds"],
                ["adrpo", "fm"], ["adrpo", "fmm"]):
        with pytest.raises((pytest.fail.Exception, AssertionError)):
            check_command(bad, "bad", prefix_ok=bad == ["adrpo", "fmm"])


# --- commands named in prose, and results tables --------------------------------------------------


def code_spans(text: str) -> list[tuple[int, str]]:
    """(line, content) of each inline code span outside fenced blocks."""
    spans = []
    for number, line in enumerate(without_blocks(text).splitlines(), 1):
        spans += [(number, m.group(2).strip()) for m in re.finditer(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", line)]
    return spans


@pytest.mark.parametrize("page", PAGES, ids=[rel(p) for p in PAGES])
def test_commands_named_in_prose_exist(page):
    text = page.read_text()
    for number, span in code_spans(text):
        for variant in usage_variants(span):
            for command in words(variant):
                check_command(command, f"{rel(page)}:{number}: `{span}`", prefix_ok=True)
    presets = set(cli.list_presets())
    named = {m.group(1) for m in re.finditer(r"--preset[ =]([a-z0-9][a-z0-9_.-]*[a-z0-9])", text)}
    assert named <= presets, f"{rel(page)} names presets that do not exist: {sorted(named - presets)}"


def tables(text: str) -> list[tuple[int, int]]:
    """(first line, last line), 0-based, of each Markdown table outside fenced blocks."""
    lines, found, i = without_blocks(text).splitlines(), [], 0
    while i < len(lines) - 1:
        if lines[i].lstrip().startswith("|") and re.match(r"^\s*\|?\s*:?-{3,}", lines[i + 1]):
            j = i + 2
            while j < len(lines) and lines[j].lstrip().startswith("|"):
                j += 1
            found.append((i, j - 1))
            i = j
        else:
            i += 1
    return found


def names_a_command(section: str) -> bool:
    for _, span in code_spans(section):
        for command in words(span):
            if Path(command[0]).name in ("make", "adrpo") or adrpo_argv(command) is not None:
                return True
    if re.search(r"benchmarks/\w+\.py", section):
        return True
    blocks = [line for line in section.splitlines() if re.match(r"^\s*(make|adrpo|\S*/adrpo|python\S* benchmarks/)\b", line)]
    return bool(blocks)


@pytest.mark.parametrize("page", PAGES, ids=[rel(p) for p in PAGES])
def test_results_tables_name_their_command(page):
    text = page.read_text()
    lines = text.splitlines()
    results_page = any(page.match(pattern) for pattern in RESULTS_PAGES) and page.parent == DOCS
    for first, last in tables(text):
        if not results_page and "±" not in "\n".join(lines[first:last + 1]):
            continue
        heading = next((i for i in range(first, -1, -1) if re.match(r"^#{1,2} ", lines[i])), 0)
        section = "\n".join(lines[heading:first])
        assert names_a_command(section), (
            f"{rel(page)}:{first + 1}: a results table whose section (from line {heading + 1}) names no command that prints it "
            "(`make X`, `adrpo ...` or benchmarks/X.py)")


def test_results_table_rule(tmp_path):
    page = tmp_path / "results.md"
    page.write_text("# R\n\n## A — `make demo`\n\n| a | b |\n|---|---|\n| 1 ± 0 | 2 |\n\n## B\n\n| a |\n|---|\n| 0.5 ± 0.1 |\n")
    text = page.read_text()
    found = tables(text)
    assert found == [(4, 6), (10, 12)]
    lines = text.splitlines()
    assert names_a_command("\n".join(lines[2:4])) and not names_a_command("\n".join(lines[8:10]))


