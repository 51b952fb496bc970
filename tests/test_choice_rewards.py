"""Multiple-choice rewards: the last answer tag graded against the gold choice (case, punctuation,
option letters, ambiguous tags), the format regex, conversational completions, run-time errors
naming the sample, and the ``checked`` contract through the YAML ``callable`` entry."""

from __future__ import annotations

import pytest

from adrpo.rewards.base import RewardError
from adrpo.rewards.choice import answer_format_reward, choice_accuracy_reward, matched_choices
from adrpo.rewards.text import build_reward

CHOICES = ["Man", "Woman", "Child", "Dog barking"]


def _accuracy(completions, answer="Woman", choices=CHOICES):
    n = len(completions)
    return choice_accuracy_reward(prompts=["who?"] * n, completions=completions, answer=[answer] * n, choices=[choices] * n)


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("<answer>Woman</answer>", 1.0),
        ("<answer>woman</answer>", 1.0),  # case
        ("<answer>  WOMAN. </answer>", 1.0),  # whitespace and punctuation
        ("<answer>'Woman'</answer>", 1.0),  # quoted as in the prompt
        ("<answer>Man</answer>", 0.0),
        ("<answer>B</answer>", 1.0),  # option letter, A = first choice
        ("<answer>(b)</answer>", 1.0),
        ("<answer>B.</answer>", 1.0),
        ("<answer>A</answer>", 0.0),
        ("<answer>Z</answer>", 0.0),  # a letter past the last choice
        ("<answer>(B) Woman</answer>", 1.0),  # letter and text agree
        ("<answer>(A) Woman</answer>", 0.0),  # letter and text disagree: two choices, wrong
        ("<answer>It is a woman.</answer>", 1.0),  # contains one choice as whole words
        ("<answer>Man or Woman</answer>", 0.0),  # names two choices equally
        ("<answer>a woman</answer>", 1.0),  # whole words: "Man" is not found inside "woman"
        ("<answer>Man</answer> on reflection <answer>Woman</answer>", 1.0),  # two tags: the last counts
        ("<answer>Woman</answer> no wait <answer>Man</answer>", 0.0),
        ("Woman", 0.0),  # no tag
        ("<answer>Woman", 0.0),  # unclosed tag
        ("<answer></answer>", 0.0),
        ("<think>it sounds like a woman</think><answer>\nWoman\n</answer>", 1.0),
    ],
)
def test_choice_accuracy_on_tricky_completions(completion, expected):
    assert _accuracy([completion]) == [expected]


def test_a_tag_naming_a_choice_and_the_longer_choice_containing_it_is_ambiguous():
    assert matched_choices("a dog barking loudly", ["Dog", "Dog barking"]) == {0, 1}
    assert _accuracy(["<answer>Dog barking</answer>"], answer="Dog barking", choices=["Dog", "Dog barking"]) == [1.0]


def test_a_choice_that_is_a_letter_is_read_as_text_first():
    # Choices "B" and "A": the tag "B" is the choice "B" (index 0), not option letter B.
    assert _accuracy(["<answer>B</answer>"], answer="B", choices=["B", "A"]) == [1.0]


def test_an_empty_tag_never_matches_a_punctuation_choice():
    assert matched_choices("", ["?", "yes"]) == set()
    assert matched_choices("...", ["?", "yes"]) == set()


def test_choice_accuracy_reads_conversational_completions():
    completions = [[{"role": "assistant", "content": "<answer>Child</answer>"}],
                   [{"role": "assistant", "content": [{"type": "text", "text": "<answer>C</answer>"}]}]]
    assert _accuracy(completions, answer="Child") == [1.0, 1.0]


def test_choice_accuracy_grades_each_sample_against_its_own_choices():
    rewards = choice_accuracy_reward(
        prompts=["p0", "p1"], completions=["<answer>A</answer>", "<answer>A</answer>"],
        answer=["yes", "guitar"], choices=[["yes", "no"], ["piano", "guitar"]])
    assert rewards == [1.0, 0.0]


def test_an_answer_not_among_the_choices_names_the_sample():
    with pytest.raises(RewardError, match=r"sample 1 \(prompt 'p1'\) has answer 'Cat'"):
        choice_accuracy_reward(prompts=["p0", "p1"], completions=["x", "y"], answer=["Man", "Cat"], choices=[CHOICES, CHOICES])


def test_choices_that_are_not_a_list_of_strings_name_the_sample():
    with pytest.raises(RewardError, match=r"sample 0 .*expected a list of strings"):
        choice_accuracy_reward(prompts=["p0"], completions=["x"], answer=["Man"], choices=["Man, Woman"])


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("<answer>Woman</answer>", 1.0),
        ("  <answer>Woman</answer>\n", 1.0),
        ("<think>high pitch\nso a woman</think>\n<answer>Woman</answer>", 1.0),
        ("<think></think><answer>B</answer>", 1.0),
        ("<answer></answer>", 0.0),  # empty answer
        ("<answer>  </answer>", 0.0),
        ("Woman", 0.0),  # no tag
        ("The answer: <answer>Woman</answer>", 0.0),  # text outside the blocks
        ("<answer>Woman</answer> done", 0.0),
        ("<answer>Man</answer><answer>Woman</answer>", 0.0),  # two answers
        ("<answer><answer>Woman</answer></answer>", 0.0),  # nested
        ("<answer>Woman</answer><think>x</think>", 0.0),  # think after the answer
        ("<think>a</think><think>b</think><answer>Woman</answer>", 0.0),  # two think blocks
        ("<think>x<answer>Man</answer></think><answer>Woman</answer>", 0.0),  # answer inside think
        ("<answer>Woman", 0.0),
    ],
)
def test_answer_format_reward(completion, expected):
    assert answer_format_reward(prompts=["p"], completions=[completion]) == [expected]
    assert answer_format_reward(prompts=["p"], completions=[[{"role": "assistant", "content": completion}]]) == [expected]


def test_the_rewards_build_from_yaml_entries_and_are_checked():
    accuracy = build_reward({"type": "callable", "path": "adrpo.rewards.choice:choice_accuracy_reward", "weight": 1.0})
    form = build_reward({"type": "callable", "path": "adrpo.rewards.choice:answer_format_reward", "weight": 0.5})
    completions = ["<answer>B</answer>", "Woman"]
    assert accuracy(["p", "p"], completions, answer=["Woman", "Woman"], choices=[CHOICES, CHOICES]) == [1.0, 0.0]
    assert form(["p", "p"], completions) == [1.0, 0.0]


def test_choice_accuracy_is_logged_per_category():
    logged = {}
    rewards = choice_accuracy_reward(
        ["q"] * 4, ["<answer>a</answer>", "<answer>b</answer>", "<answer>a</answer>", "none"],
        answer=["a", "a", "a", "b"], choices=[["a", "b"]] * 4, category=["sound", "sound", "music", None],
        log_metric=lambda name, value: logged.__setitem__(name, value))
    assert rewards == [1.0, 0.0, 1.0, 0.0]
    assert logged == {"accuracy/music": 1.0, "accuracy/sound": 0.5}  # rows without a category are not counted
