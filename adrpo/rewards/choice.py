"""Multiple-choice rewards (MMAU / AVQA recipes) with TRL's signature ``f(prompts, completions, **columns) -> list``.

:func:`choice_accuracy_reward` reads the dataset columns ``answer`` and ``choices`` written by
:mod:`adrpo.data.mmau`; :func:`answer_format_reward` needs no column. Both read plain-string
and conversational completions (:func:`adrpo.rewards.text.completion_text`).

Use them from a recipe's YAML as ``{type: callable, path: "adrpo.rewards.choice:choice_accuracy_reward",
weight: 1.0}`` and ``{type: callable, path: "adrpo.rewards.choice:answer_format_reward", weight: 0.5}``;
the weights end in TRL's ``reward_weights``. Accuracy 1.0 and format 0.5 is a suggested default
(the format term shapes early training without outweighing correctness), not a value taken
from a paper.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from adrpo.data.mmau import normalize_choice
from adrpo.rewards.base import RewardError
from adrpo.rewards.text import completion_text

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_LETTER = re.compile(r"\(?([A-Za-z])\)?[.:]?")  # "B", "(B)", "B.", "(b):"
_LETTER_THEN_TEXT = re.compile(r"\(?([A-Za-z])[).:]\s*(.+)", re.DOTALL)  # "(B) Woman", "B. Woman", "b: woman"

# Any character that does not start a think or answer tag, so neither block can nest or repeat.
_BODY = r"(?:(?!</?(?:think|answer)>).)"
ANSWER_FORMAT = re.compile(rf"\s*(?:<think>{_BODY}*</think>\s*)?<answer>{_BODY}*?(?:(?!</?(?:think|answer)>)\S){_BODY}*?</answer>\s*", re.DOTALL)
"""The full match :func:`answer_format_reward` asks for (``re.DOTALL``, so ``.`` spans lines)::

    \\s*(?:<think>BODY*</think>\\s*)?<answer>BODY*?(?:(?!TAG)\\S)BODY*?</answer>\\s*

with ``TAG = </?(?:think|answer)>`` and ``BODY = (?:(?!TAG).)``: optional leading whitespace, an
optional think block, one answer block holding at least one non-space character, optional
trailing whitespace, nothing else; neither block may contain a think or answer tag.
"""


def last_answer_tag(text: str) -> str | None:
    """The content of the last ``<answer>…</answer>`` in ``text`` (non-greedy, may span lines), or None."""
    found = _ANSWER.findall(text)
    return found[-1] if found else None


def matched_choices(tagged: str, choices: Sequence[str]) -> set[int]:
    """The indices of the choices an answer tag's content names; more than one means ambiguous.

    Tried in order, the first rule that names any choice decides (texts compared after
    :func:`adrpo.data.mmau.normalize_choice`):

    1. the whole content equals a choice: ``"woman."`` names ``"Woman"``;
    2. the content is a bare option letter, A = the first choice: ``"B"``, ``"(b)"``, ``"B."``;
    3. a letter then a choice's text: ``"(B) Woman"`` names choice B and the choice "Woman", one
       index when they agree, two (ambiguous) when they do not;
    4. the content contains choices as whole words: ``"it is a woman"`` names "Woman",
       ``"man or woman"`` names both. Choices contained in a longer contained choice still
       count, so ``"a dog barking"`` names both "Dog" and "Dog barking".
    """
    key = normalize_choice(tagged)
    keys = [normalize_choice(choice) for choice in choices]
    exact = {i for i, k in enumerate(keys) if k and k == key}
    if exact:
        return exact
    content = tagged.strip()
    letter = _LETTER.fullmatch(content)
    if letter:
        index = ord(letter.group(1).upper()) - ord("A")
        return {index} if index < len(choices) else set()
    lettered = _LETTER_THEN_TEXT.fullmatch(content)
    if lettered:
        by_text = {i for i, k in enumerate(keys) if k == normalize_choice(lettered.group(2))}
        index = ord(lettered.group(1).upper()) - ord("A")
        if by_text and index < len(choices):
            return by_text | {index}
    return {i for i, k in enumerate(keys) if k and f" {k} " in f" {key} "}


def choice_accuracy_reward(prompts, completions, answer, choices, **kwargs) -> list[float]:
    """1.0 when the completion's last ``<answer>…</answer>`` names exactly one choice
    (:func:`matched_choices`) and it is the ``answer``, else 0.0 (no tag, no choice, or two).
    With a ``category`` column (MMAU's sound / music / speech) it also logs the accuracy per
    category through TRL's ``log_metric``.

    Raises:
        RewardError: a sample's ``choices`` is not a list of strings, or its ``answer`` is not
            one of them; the message names the sample index and its prompt.
    """
    rewards = []
    for i, (prompt, completion, gold, options) in enumerate(zip(prompts, completions, answer, choices)):
        gold_index = _gold_index(gold, options, i, prompt)
        tagged = last_answer_tag(completion_text(completion))
        rewards.append(float(tagged is not None and matched_choices(tagged, options) == {gold_index}))
    _log_category_accuracy(rewards, kwargs.get("category"), kwargs.get("log_metric"))
    return rewards


def _log_category_accuracy(rewards: list[float], categories: Sequence[Any] | None, log_metric: Any) -> None:
    """With a ``category`` column and TRL's ``log_metric``: the batch's accuracy per category as
    ``accuracy/<category>`` (TRL averages each over processes and the logging interval; in evaluation
    ``eval_accuracy/<category>``, the mean over evaluation batches)."""
    if categories is None or log_metric is None:
        return
    by_category: dict[str, list[float]] = {}
    for category, reward in zip(categories, rewards):
        if category is not None:
            by_category.setdefault(str(category), []).append(reward)
    for category, values in sorted(by_category.items()):
        log_metric(f"accuracy/{category}", sum(values) / len(values))


def answer_format_reward(prompts, completions, **kwargs) -> list[float]:
    """1.0 when the completion fully matches :data:`ANSWER_FORMAT` (one non-empty answer block,
    optionally after one think block, nothing else but whitespace), else 0.0."""
    return [float(ANSWER_FORMAT.fullmatch(completion_text(c)) is not None) for c in completions]


def _gold_index(gold: Any, options: Any, i: int, prompt: Any) -> int:
    where = f"reward 'choice_accuracy_reward': sample {i} (prompt {completion_text(prompt)[:200]!r})"
    if not isinstance(options, Sequence) or isinstance(options, str) or not all(isinstance(c, str) for c in options):
        raise RewardError(f"{where} has choices {options!r}; expected a list of strings")
    if not isinstance(gold, str) or gold.strip() not in [c.strip() for c in options]:
        raise RewardError(f"{where} has answer {gold!r}, which is not among its choices {list(options)}")
    return [c.strip() for c in options].index(gold.strip())
