"""transformers 5 deprecations that TRL 1.16 and peft trip on every run, whatever adrpo or a recipe sets.

transformers 5 renamed gradient checkpointing to activation checkpointing and kept the old names as aliases that
raise a ``FutureWarning`` ("... is deprecated and will be removed in v6"). adrpo uses the current names (the
recipe sets ``activation_checkpointing``, :mod:`adrpo.llm.recipe`), but code we do not own still calls the old ones:

- TRL's ``_unwrap_model_for_generation`` (trl/models/utils.py:136, and :138 / :154 with checkpointing on), at
  every generation, and its ``disable_gradient_checkpointing`` (trl/models/utils.py:407, and :409 / :414), around
  the old-policy and reference forwards of every generation: ``is_gradient_checkpointing``,
  ``gradient_checkpointing_disable`` and ``gradient_checkpointing_enable``;
- peft's ``PeftModel.__init__`` (peft/peft_model.py:184, reached from TRL's ``get_peft_model``):
  ``is_gradient_checkpointing``, once per recipe with ``peft:``.

The trainers call :func:`ignore_trl_checkpointing_deprecations` before TRL's ``__init__`` and at every generation
(a caller's ``warnings.catch_warnings`` around the trainer's construction, as tests and the experiment harness
write, drops a filter added inside it). It silences exactly these three messages, and only as transformers'
``modeling_utils`` raises them; every other warning, and transformers' own for the deprecated
``TrainingArguments.gradient_checkpointing`` (raised from ``training_args``), still shows. Drop it once TRL calls
the current names.
"""

from __future__ import annotations

import warnings

DEPRECATED_NAMES = ("is_gradient_checkpointing", "gradient_checkpointing_enable", "gradient_checkpointing_disable")
MESSAGE = f"`({'|'.join(DEPRECATED_NAMES)})` is deprecated"
MODULE = r"transformers\.modeling_utils"


def ignore_trl_checkpointing_deprecations() -> None:
    """Ignore transformers' FutureWarnings for :data:`DEPRECATED_NAMES`, process-wide, unless the filter is there.

    Process-wide rather than in a ``warnings.catch_warnings`` around TRL's calls, and never re-added: each change to
    the filters resets Python's once-per-location registry, and every other warning would then repeat at every step."""
    ours = ("ignore", MESSAGE, FutureWarning, MODULE)
    if not any((f[0], getattr(f[1], "pattern", None), f[2], getattr(f[3], "pattern", None)) == ours for f in warnings.filters):
        warnings.filterwarnings("ignore", message=MESSAGE, category=FutureWarning, module=MODULE)
