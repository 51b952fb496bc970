"""What ``sequence_classifier_reward`` scores: the whole conversation rendered by the reward
model's chat template (one BOS, written by the template), the documented plain-text fallback
without a template, and scores that do not depend on padding side, pad token or batching.

Every expected score is a direct, unpadded model call on a text written out by hand here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from adrpo.llm.tiny import char_tokenizer
from adrpo.rewards.text import chat_messages, sequence_classifier_reward

CHARS = list("abcdefghijklmnopqrstuvwxyz 0123456789+=?:\n")
# "<bos>" then one line per message: the role's first letter, ":", the content.
TEMPLATE = "{{ bos_token }}{% for message in messages %}{{ message['role'][0] }}:{{ message['content'] }}\n{% endfor %}"


def _tokenizer(*, chat_template: str | None, with_pad_token: bool = True):
    """The char tokenizer plus a <bos> that a plain ``tokenizer(text)`` prepends, as Gemma's does."""
    from tokenizers import processors

    tokenizer = char_tokenizer(CHARS)
    tokenizer.add_special_tokens({"bos_token": "<bos>"})
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", tokenizer.bos_token_id)]
    )
    tokenizer.chat_template = chat_template
    if not with_pad_token:
        tokenizer.pad_token = None
    return tokenizer


def _save_reward_model(path: Path, tokenizer, *, family: str = "qwen2", config_pad_token_id: int = 0,
                       padding_side: str | None = None) -> str:
    """A random one-label sequence classifier over ``tokenizer``'s vocabulary, saved to ``path``."""
    from transformers import GPT2Config, GPT2ForSequenceClassification, Qwen2Config, Qwen2ForSequenceClassification

    torch.manual_seed(0)
    if family == "qwen2":
        config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                             num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128, num_labels=1,
                             pad_token_id=config_pad_token_id)
        model = Qwen2ForSequenceClassification(config)
    else:  # gpt2: absolute position embeddings, so left padding would shift every real token
        config = GPT2Config(vocab_size=len(tokenizer), n_positions=128, n_embd=16, n_layer=1, n_head=2, num_labels=1,
                            pad_token_id=config_pad_token_id)
        model = GPT2ForSequenceClassification(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    if padding_side:  # as a hub tokenizer_config.json declares it
        config_file = path / "tokenizer_config.json"
        config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "padding_side": padding_side}))
    return str(path)


@torch.no_grad()
def _direct_scores(path: str, texts: list[str], *, add_special_tokens: bool) -> list[float]:
    """Logit 0 of the saved model on each text alone (no padding)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    return [model(**tokenizer(t, return_tensors="pt", add_special_tokens=add_special_tokens)).logits[0, 0].item()
            for t in texts]


SYSTEM_AND_USER = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "1+2="}]
USER_IN_PARTS = [{"role": "user", "content": [{"type": "text", "text": "say"}, {"type": "image"}, {"type": "text", "text": "7"}]}]


def test_chat_messages_is_the_whole_conversation_with_text_contents():
    assert chat_messages(SYSTEM_AND_USER, [{"role": "assistant", "content": "3"}]) == [
        {"role": "system", "content": "be brief"}, {"role": "user", "content": "1+2="}, {"role": "assistant", "content": "3"},
    ]
    assert chat_messages(USER_IN_PARTS, "7") == [{"role": "user", "content": "say\n7"}, {"role": "assistant", "content": "7"}]
    assert chat_messages("1+2=", "3") == [{"role": "user", "content": "1+2="}, {"role": "assistant", "content": "3"}]


@pytest.mark.parametrize(
    "prompts, completions, rendered",
    [
        (  # conversational: every prompt message, the completion as the assistant's turn
            [SYSTEM_AND_USER, USER_IN_PARTS],
            [[{"role": "assistant", "content": "3"}], [{"role": "assistant", "content": "seven is 7"}]],
            ["<bos>s:be brief\nu:1+2=\na:3\n", "<bos>u:say\n7\na:seven is 7\n"],
        ),
        (  # plain strings: a user message and an assistant message
            ["1+2=", "what is 3+4?"],
            ["3", "seven is 7"],
            ["<bos>u:1+2=\na:3\n", "<bos>u:what is 3+4?\na:seven is 7\n"],
        ),
    ],
)
def test_with_a_chat_template_the_rendered_conversation_is_scored(tmp_path, prompts, completions, rendered):
    path = _save_reward_model(tmp_path, _tokenizer(chat_template=TEMPLATE))
    expected = _direct_scores(path, rendered, add_special_tokens=False)  # the template wrote the one BOS
    doubled_bos = _direct_scores(path, rendered, add_special_tokens=True)
    assert all(abs(a - b) > 1e-4 for a, b in zip(expected, doubled_bos))  # so a second BOS would be caught

    scores = sequence_classifier_reward(path, batch_size=2)(prompts=prompts, completions=completions)
    assert scores == pytest.approx(expected, abs=1e-5)


def test_without_a_chat_template_prompt_text_and_completion_are_joined(tmp_path):
    path = _save_reward_model(tmp_path, _tokenizer(chat_template=None))
    prompts = ["1+2=", SYSTEM_AND_USER, USER_IN_PARTS]
    completions = ["3", [{"role": "assistant", "content": "3"}], [{"role": "assistant", "content": "ok"}]]
    # the prompt's (last message's) text, then the completion, with nothing between;
    # tokenized as a plain tokenizer(text) call, so with the tokenizer's own BOS
    expected = _direct_scores(path, ["1+2=3", "1+2=3", "say\n7ok"], add_special_tokens=True)

    scores = sequence_classifier_reward(path, batch_size=3)(prompts=prompts, completions=completions)
    assert scores == pytest.approx(expected, abs=1e-5)
    assert scores[0] == scores[1]  # only the last prompt message is read without a template


@pytest.mark.parametrize(
    "family, tokenizer_options, model_options",
    [
        ("gpt2", {}, {"padding_side": "left"}),  # the tokenizer asks for left padding
        ("qwen2", {}, {"config_pad_token_id": 2}),  # the model's config names another pad id than the tokenizer's
        ("qwen2", {"with_pad_token": False}, {}),  # no pad token: scored one at a time
    ],
)
def test_padding_and_batching_do_not_change_the_score(tmp_path, family, tokenizer_options, model_options):
    tokenizer = _tokenizer(chat_template=TEMPLATE, **tokenizer_options)
    path = _save_reward_model(tmp_path, tokenizer, family=family, **model_options)
    prompts = ["1+2=", "what is 3+4?", "say 7"]
    completions = ["3", "seven is 7 and that is all", "7"]  # lengths differ, so the batch is padded
    rendered = [f"<bos>u:{p}\na:{c}\n" for p, c in zip(prompts, completions)]
    expected = _direct_scores(path, rendered, add_special_tokens=False)

    batched = sequence_classifier_reward(path, batch_size=3)(prompts=prompts, completions=completions)
    one_by_one = sequence_classifier_reward(path, batch_size=1)(prompts=prompts, completions=completions)
    assert batched == pytest.approx(expected, abs=1e-5)
    assert one_by_one == pytest.approx(expected, abs=1e-5)
    assert len({round(s, 4) for s in batched}) == 3  # the three texts are told apart
