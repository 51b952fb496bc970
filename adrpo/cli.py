"""The ``adrpo`` command line.

    adrpo fm compare --preset digits-quick           # methods × seeds, table + plot + JSON (finished runs are skipped)
    adrpo fm compare --config my.yaml --set trainer.num_steps=50 --seeds 0
    adrpo fm train --config adrpo/configs/digits-train.yaml [--resume | --overwrite]
    adrpo fm make-tiny-sd3 runs/tiny-sd3 && adrpo fm train --preset sd3-tiny   # SD3 path on a CPU
    adrpo fm make-tiny-flux runs/tiny-flux && adrpo fm train --preset flux-tiny  # FLUX path on a CPU
    adrpo fm export --preset flux-tiny --checkpoint runs/flux-tiny/checkpoints/step-00000002 --output lora-step2
    adrpo grpo train --config my-grpo.yaml [--resume]  # ADRPO-GRPO (or stock GRPO) on TRL
    adrpo grpo compare --preset arithmetic-quick       # GRPO β sweep vs ADRPO on the LLM miniature
    adrpo sweep --preset digits-sweep                 # a grid per method family: fronts, verdicts, image grids
    adrpo presets                                     # list the bundled YAML presets

``--set a.b=value`` overrides any YAML key (values are parsed as YAML: 1e-3, true, [0, 1]).
``--preset`` takes the presets of the command's kind (``--help`` lists them): ``grpo train`` its
recipes, ``fm train`` / ``fm export`` flow train configs, ``fm compare`` / ``grpo compare`` experiment
specs on a flow / an LLM task, ``sweep`` either kind of spec.

Paths. What a YAML names for the run to *read* is relative to the YAML's own folder, wherever the
command runs: a data or prompt file (``dataset.path``, ``task_args.prompts``) always; a model or a
dataset ``name`` (``model_name_or_path``, a reward's ``model``) when it starts with ``./``, ``../``,
``/`` or ``~`` or exists in that folder, otherwise it is a hub id (``Qwen/Qwen2.5-0.5B``) and stays
one. A ``type: callable`` reward, ``{type: callable, path: "my_rewards:score"}``, imports
``my_rewards.py`` (or a ``my_rewards/`` package) from the YAML's folder first, then from the installed
packages. What a run *writes* (``output_dir``) is relative to the working directory, so a bundled
preset's runs land in ``runs/`` here and not inside the package. A ``--set`` value is taken as typed,
so a relative path in it is relative to the working directory.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import re
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from adrpo.distributed_exit import end_distributed
from adrpo.errors import ConfigError

# What a preset is, by the command that runs it: a `grpo train` recipe, an `fm train` config, or an
# experiment spec on a flow or an LLM task (`sweep` runs both kinds of spec).
PRESET_COMMANDS = {"grpo": "adrpo grpo train", "train": "adrpo fm train", "flow": "adrpo fm compare", "llm": "adrpo grpo compare"}


def preset_path(name: str, kinds: tuple[str, ...] | None = None) -> Path:
    """The bundled YAML ``name``; with ``kinds``, refused unless its :func:`preset_kind` is one of them."""
    path = Path(str(resources.files("adrpo") / "configs" / f"{name}.yaml"))
    if not path.exists():
        raise ConfigError(f"unknown preset {name!r}; available: {', '.join(list_presets(kinds))}")
    if kinds is not None and preset_kind(name) not in kinds:
        kind = preset_kind(name)
        raise ConfigError(f"preset {name!r} is for `{PRESET_COMMANDS[kind]}`{' or `adrpo sweep`' if kind in ('flow', 'llm') else ''}; "
                          f"this command takes: {', '.join(list_presets(kinds))}")
    return path


def list_presets(kinds: tuple[str, ...] | None = None) -> list[str]:
    """The bundled presets' names, sorted; with ``kinds``, only those of these :func:`preset_kind` s."""
    names = sorted(p.name[: -len(".yaml")] for p in resources.files("adrpo").joinpath("configs").iterdir() if p.name.endswith(".yaml"))
    return names if kinds is None else [name for name in names if preset_kind(name) in kinds]


@functools.cache
def preset_kind(name: str) -> str:
    """A preset's kind (a key of :data:`PRESET_COMMANDS`): ``grpo`` (it names ``model_name_or_path``),
    ``flow`` or ``llm`` (an experiment spec with ``methods``, by its task), else ``train``."""
    from adrpo.experiments.spec import TASK_KINDS

    values = load_yaml(preset_path(name))
    if "model_name_or_path" in values:
        return "grpo"
    if "methods" not in values:
        return "train"
    return TASK_KINDS.get(values.get("task", "digits"), "flow")


class YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader reading floats as YAML 1.2 does: ``1e-3`` and ``5E+2`` are numbers, not the
    strings YAML 1.1 makes of exponents without a dot (a learning rate would reach the trainer as text)."""


YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|\.[0-9_]+(?:[eE][-+]?[0-9]+)?|[0-9][0-9_]*[eE][-+]?[0-9]+"
               r"|\.(?:inf|Inf|INF)|[-+]\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."),
)


def parse_yaml(text: str) -> Any:
    return yaml.load(text, Loader=YamlLoader)  # noqa: S506 - a SafeLoader subclass


def load_yaml(path: Path) -> dict[str, Any]:
    with open(path) as handle:
        values = parse_yaml(handle) or {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path} must hold a YAML mapping")
    return values


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set dotted keys: ``trainer.num_steps=50`` -> values["trainer"]["num_steps"] = 50."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        *parents, leaf = key.split(".")
        node = values
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {part!r} is not a mapping")
        node[leaf] = parse_yaml(raw)
    return values


def _config_file(args: argparse.Namespace) -> Path:
    """The YAML of ``--config`` or ``--preset``, absolute."""
    if (args.config is None) == (args.preset is None):
        raise ConfigError("give exactly one of --config or --preset")
    path = Path(args.config) if args.config else preset_path(args.preset, getattr(args, "preset_kinds", None))
    if not path.is_file():
        raise ConfigError(f"--config {args.config!r}: no such file")
    return path.absolute()


def _config_values(args: argparse.Namespace) -> dict[str, Any]:
    """The YAML's mapping, its ``task_args`` paths resolved from its folder (:func:`resolve_task_paths`),
    then the ``--set`` overrides (taken as typed)."""
    path = _config_file(args)
    values = load_yaml(path)
    if isinstance(values.get("task_args"), dict):
        values["task_args"] = resolve_task_paths(values["task_args"], path.parent)
    return apply_overrides(values, args.set)


def _relative_to_config(args: argparse.Namespace, path: str) -> str:
    """Data files named in a YAML are relative to that file (absolute paths stay)."""
    if Path(path).is_absolute():
        return path
    base = Path(args.config).parent if args.config else preset_path(args.preset).parent
    return str(base / path)


def resolve_task_paths(task_args: dict[str, Any], folder: Path) -> dict[str, Any]:
    """A copy of a task's ``task_args`` read from a YAML in ``folder``, the paths it reads resolved by the
    rule of the module docstring: a ``prompts`` / ``eval_prompts`` file (or its dataset spec's ``path``)
    from ``folder``; a ``pipeline`` and each ``reward`` entry's ``model`` only when they are paths (hub ids stay)."""
    from adrpo.settings import path_from_config, source_from_config

    task_args = dict(task_args)
    for key in ("prompts", "eval_prompts"):
        value = task_args.get(key)
        if isinstance(value, str):
            task_args[key] = path_from_config(value, folder)
        elif isinstance(value, dict) and isinstance(value.get("path"), str):
            task_args[key] = {**value, "path": path_from_config(value["path"], folder)}
    if isinstance(task_args.get("pipeline"), str):
        task_args["pipeline"] = source_from_config(task_args["pipeline"], folder)
    reward = task_args.get("reward")
    if isinstance(reward, (dict, list)):
        entries = [{**e, "model": source_from_config(e["model"], folder)} if isinstance(e, dict) and isinstance(e.get("model"), str) else e
                   for e in (reward if isinstance(reward, list) else [reward])]
        task_args["reward"] = entries if isinstance(reward, list) else entries[0]
    return task_args


def cmd_experiment(args: argparse.Namespace) -> None:
    """`fm compare`, `grpo compare` and `sweep`: one engine, one report; the compare commands
    check that the spec's task is of their kind."""
    from adrpo.experiments.engine import run_experiment
    from adrpo.experiments.report import write_report
    from adrpo.experiments.spec import ExperimentSpec
    from adrpo.settings import check_output_dir

    values = _config_values(args)
    if args.kind == "llm":
        values.setdefault("task", "arithmetic")
    for name in ("output_dir", "seeds", "workers"):
        if getattr(args, name, None) is not None:
            values[name] = getattr(args, name)
    spec = ExperimentSpec.from_dict(values)
    if args.kind is not None and spec.kind != args.kind:
        command = "adrpo fm compare" if spec.kind == "flow" else "adrpo grpo compare"
        raise ConfigError(f"task {spec.task!r} is a {spec.kind} task: run it with `{command}` or `adrpo sweep`")
    check_output_dir(spec.output_dir, field="--output-dir" if args.output_dir is not None else "output_dir")
    results = run_experiment(spec, force=args.force)
    paths = write_report(results, Path(spec.output_dir))
    print(paths.pop("table").read_text())
    print("\n".join(f"{name + ':':<10} {path}" for name, path in paths.items()))
    print(f"{'runs:':<10} {Path(spec.output_dir) / 'runs'}")


def _flow_run(args: argparse.Namespace, *, trackers: bool = True):
    """(spec, task, trainer) of an `fm train` config; ``trackers=False`` opens no
    TensorBoard/wandb run (for commands that only read the run)."""
    from adrpo.experiments.train import TrainSpec
    from adrpo.flow.trainer import FlowTrainer
    from adrpo.settings import check_output_dir
    from adrpo.tasks import build_task

    spec = TrainSpec.from_dict(_config_values(args))
    check_output_dir(spec.config.output_dir, field="trainer.output_dir")  # before the task builds (or pretrains) anything
    for key in ("prompts", "eval_prompts"):
        value = spec.task_args.get(key)
        if isinstance(value, str):
            spec.task_args[key] = _relative_to_config(args, value)
        elif isinstance(value, dict) and "path" in value:
            value["path"] = _relative_to_config(args, value["path"])
    config = spec.config if trackers else dataclasses.replace(spec.config, report_to=["none"])
    task = build_task(spec.task, spec.task_args, seed=config.seed)
    trainer = FlowTrainer(config, task.base_model(), task.reward, task.train_prompts, diversity_fn=task.embed)
    return spec, task, trainer


def cmd_fm_train(args: argparse.Namespace) -> None:
    spec, task, trainer = _flow_run(args)
    rows = trainer.train(resume_from_checkpoint=args.resume, overwrite=args.overwrite, allow_config_changes=args.allow_change,
                         evaluator=task.evaluate, eval_steps=spec.eval_steps)
    exported = task.export(trainer) if hasattr(task, "export") else None  # under FSDP2 a collective: before the group ends
    trainer.accelerator.state.destroy_process_group()
    if not trainer.accelerator.is_main_process:
        return
    evals = [row for row in rows if "eval/reward" in row]
    for row in evals[:1] + evals[1:][-1:]:  # the first and the last (one row when a stop left no final evaluation)
        print(f"step {row['step']:>5}: reward {row['eval/reward']:.4f}  diversity {row['eval/diversity']:.4f}  w2 {row['eval/w2']:.5f}")
    if exported is not None:
        print(f"weights for diffusers: {exported}")
    _print_alarms(spec.config, trainer.state.step)
    print(f"run directory: {spec.config.output_dir}")


def _print_alarms(config, step: int) -> None:
    """The collapse monitor's record of an `fm train` run, and whether it stopped the run."""
    from adrpo.core.monitor import read_alarms

    if config.monitor == "off":
        return
    alarms = read_alarms(Path(config.output_dir) / "alarms.jsonl")
    for alarm in alarms:
        print(f"collapse alarm: {alarm.message}")
    if step < config.num_steps:
        print(f"stopped at step {step} of {config.num_steps} (monitor: stop); --resume continues from its checkpoint")


def cmd_fm_export(args: argparse.Namespace) -> None:
    _, task, trainer = _flow_run(args, trackers=False)
    if not hasattr(task, "export"):
        raise ConfigError(f"task {task.name!r} has no diffusers export")
    trainer.load_checkpoint(args.checkpoint)
    folder = task.export(trainer, args.output)
    if trainer.accelerator.is_main_process:
        print(f"weights for diffusers (step {trainer.state.step}): {folder}")


def cmd_fm_make_tiny(args: argparse.Namespace) -> None:
    from adrpo.tasks.text_to_image import build_tiny_flux, build_tiny_sd3

    build, family = (build_tiny_sd3, "SD3") if args.family == "sd3" else (build_tiny_flux, "FLUX")
    pipeline_dir, clip_dir = build(args.folder)
    print(f"tiny {family} pipeline: {pipeline_dir}\ntiny CLIP model:    {clip_dir}")


def cmd_grpo_train(args: argparse.Namespace) -> None:
    from adrpo.llm.recipe import build_trainer, import_rewards_from, resolve_paths
    from adrpo.llm.resume import checkpoint_state, newest_complete_checkpoint, reached_max_steps

    path = _config_file(args)
    values = apply_overrides(resolve_paths(load_yaml(path), path.parent), args.set)  # --set paths: from the working directory
    import_rewards_from(values, path.parent)
    trainer = build_trainer(values)
    checkpoint = newest_complete_checkpoint(trainer.args.output_dir) if args.resume else None
    if args.resume and checkpoint is None:
        print(f"no complete checkpoint in {trainer.args.output_dir}: training from the start", file=sys.stderr)
    if checkpoint is not None and reached_max_steps(checkpoint_state(checkpoint), trainer.args.max_steps):  # training would add a step
        print(f"{checkpoint.name}: the run had reached max_steps {trainer.args.max_steps}; nothing to train, saving its weights",
              file=sys.stderr)
        trainer._load_from_checkpoint(str(checkpoint))
    else:
        trainer.train(resume_from_checkpoint=None if checkpoint is None else str(checkpoint))
    trainer.save_model()
    if trainer.accelerator.is_main_process:
        print(f"model saved to {trainer.args.output_dir}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adrpo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    top = parser.add_subparsers(dest="command", required=True)
    top.add_parser("presets", help="list the bundled YAML presets").set_defaults(func=lambda _: print("\n".join(list_presets())))
    fm = top.add_parser("fm", help="flow matching (ADRPO-FM and baselines)").add_subparsers(dest="fm_command", required=True)

    compare = fm.add_parser("compare", help="run methods × seeds and write the table, plots and JSON")
    compare.set_defaults(func=cmd_experiment, kind="flow")

    train = fm.add_parser("train", help="one fine-tuning run from a YAML file")
    train.set_defaults(func=cmd_fm_train)
    train.add_argument("--overwrite", action="store_true",
                       help="replace the run in output_dir: its config.json, metrics, alarms and checkpoints are deleted first")
    train.add_argument("--allow-change", dest="allow_change", action="append", default=[], metavar="FIELD",
                       help="with --resume: accept this trainer field differing from the run's config.json (repeatable)")
    export = fm.add_parser("export", help="write a checkpoint of an `fm train` run as diffusers weights (LoRA or transformer)")
    export.add_argument("--checkpoint", required=True, help="a checkpoints/step-NNNNNNNN directory of the run")
    export.add_argument("--output", required=True, help="the folder to write")
    export.set_defaults(func=cmd_fm_export)
    for family in ("sd3", "flux"):
        tiny = fm.add_parser(f"make-tiny-{family}", help=f"write a tiny random {family.upper()} pipeline and CLIP model (CPU tests, {family}-tiny preset)")
        tiny.add_argument("folder")
        tiny.set_defaults(func=cmd_fm_make_tiny, family=family)
    grpo_parser = top.add_parser("grpo", help="language models: ADRPO-GRPO on TRL (`adrpo grpo --config F` = `adrpo grpo train --config F`)")
    grpo_parser.set_defaults(func=cmd_grpo_train)
    grpo = grpo_parser.add_subparsers(dest="grpo_command")
    grpo_train = grpo.add_parser("train", help="one ADRPO/GRPO run from a YAML file (TRL conventions)")
    grpo_train.set_defaults(func=cmd_grpo_train)
    grpo_compare = grpo.add_parser("compare", help="GRPO with fixed β vs ADRPO on the arithmetic miniature")
    grpo_compare.set_defaults(func=cmd_experiment, kind="llm")
    sweep = top.add_parser("sweep", help="a grid of configurations × seeds on any task: table, Pareto fronts, verdicts, grids")
    sweep.set_defaults(func=cmd_experiment, kind=None)
    for sub in (compare, grpo_compare, sweep):
        sub.add_argument("--output-dir", dest="output_dir",
                         help="where the table, plots, results.json and runs/ go (replaces the spec's output_dir; relative to the working directory)")
        sub.add_argument("--seeds", type=int, nargs="+", metavar="SEED", help="the seeds to run, e.g. --seeds 0 1 2 (replaces the spec's seeds)")
        sub.add_argument("--workers", type=int, help="parallel runs (processes, one thread each)")
        sub.add_argument("--force", action="store_true", help="retrain runs that already have a complete result")
    preset_kinds = {compare: ("flow",), train: ("train",), export: ("train",), grpo_parser: ("grpo",), grpo_train: ("grpo",),
                    grpo_compare: ("llm",), sweep: ("flow", "llm")}
    for sub, kinds in preset_kinds.items():
        sub.set_defaults(preset_kinds=kinds)
        sub.add_argument("--preset", help=f"a bundled preset ({', '.join(list_presets(kinds))})")
        sub.add_argument("--config", help="a YAML file")
        sub.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a YAML key (dotted)")
    for sub in (train, grpo_parser, grpo_train):
        sub.add_argument("--resume", action="store_true", help="continue from the newest checkpoint(s)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
        end_distributed()  # the command's trainer is out of scope: free what holds the process group before Python's exit
    except ConfigError as err:  # the user's configuration or input, named by field, file or row: one line
        print(f"adrpo: error: {err}", file=sys.stderr)
        raise SystemExit(2) from err
    except KeyboardInterrupt as err:  # Ctrl-C: what finished and how to resume (an experiment's Interrupted), no traceback
        print(f"\nadrpo: {err or 'interrupted'}", file=sys.stderr)
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
