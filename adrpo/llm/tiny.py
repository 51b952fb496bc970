"""Offline building blocks: a character-level tokenizer and tiny causal LMs built from config.

Used by the tests and the CPU miniature, where no model hub is reachable. Everything is
saved with ``save_pretrained`` so that TRL can rebuild the reference model from the path.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

SPECIAL_TOKENS = ("<pad>", "<eos>", "<unk>")


def char_tokenizer(chars: Sequence[str]):
    """A fast tokenizer with one token per character of ``chars`` plus <pad>, <eos>, <unk>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    if len(set(chars)) != len(chars):
        raise ValueError("chars must not repeat")
    vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS, *chars])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def tiny_causal_lm(family: str, vocab_size: int, *, hidden: int = 32, layers: int = 2, heads: int = 4, seed: int = 0):
    """A randomly initialised Qwen2 or Llama model with token ids 0 = pad, 1 = eos."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    families = {"qwen2": (Qwen2Config, Qwen2ForCausalLM), "llama": (LlamaConfig, LlamaForCausalLM)}
    if family not in families:
        raise ValueError(f"family must be one of {sorted(families)}, got {family!r}")
    config_cls, model_cls = families[family]
    config = config_cls(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=max(1, heads // 2), max_position_embeddings=128,
        pad_token_id=0, eos_token_id=1, bos_token_id=1, tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    return model_cls(config)


def save_model_and_tokenizer(model, tokenizer, path: str | Path) -> Path:
    """Save both with ``save_pretrained`` (a processor serves as the tokenizer): TRL rebuilds the
    reference model, and ``AutoTokenizer`` / ``AutoProcessor`` the tokenizer, from ``path``."""
    path = Path(path)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
