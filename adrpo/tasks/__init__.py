"""Miniature tasks: data, pretrained base models, rewards and evaluators built offline.

Each task class takes keyword arguments from a YAML ``task_args`` mapping and a ``seed``
that sets its evaluation noise, and offers ``base_model()``, ``reward``, ``embed``,
``train_prompts`` and ``evaluate(trainer)``.
"""

from __future__ import annotations

from typing import Any

from adrpo.errors import ConfigError


def build_task(name: str, args: dict[str, Any], *, seed: int):
    """The task called ``name`` built from ``args``; evaluation noise depends on ``seed``."""
    if name == "digits":
        from adrpo.tasks.digits import DigitsTask

        args = dict(args)
        args["eval_seed"] = args.get("eval_seed", 1234) + seed
        return DigitsTask(**args)
    if name == "text_to_image":
        from adrpo.tasks.text_to_image import TextToImageTask

        args = dict(args)
        args["eval_seed"] = args.get("eval_seed", 1234) + seed
        return TextToImageTask(**args)
    raise ConfigError(f"unknown task {name!r}; available: ['digits', 'text_to_image']")
