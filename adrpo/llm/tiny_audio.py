"""Offline tiny audio-language models of real families, built from config with their processors: Qwen2-Audio
(``Qwen2AudioForConditionalGeneration`` + ``Qwen2AudioProcessor``) and the Qwen2.5-Omni thinker
(``Qwen2_5OmniThinkerForConditionalGeneration`` + ``Qwen2_5OmniProcessor``), for tests and the CPU miniature.

The tokenizer is :func:`adrpo.llm.tiny.char_tokenizer` plus the family's audio tokens and optional whole-word
tokens; the feature extractor is Whisper's with 128 mel bins and a window of ``clip_seconds`` (every clip is
padded to it: 100 frames per second). The audio encoder halves the frames twice, so one second of audio becomes
25 ``<|AUDIO|>`` tokens in the prompt, which the processor expands from the one placeholder the chat template
writes.

Qwen2.5-Omni's processor also holds a video processor, which needs torchvision (not installed here): the tiny
processor is built without one (:class:`AudioOnlyOmniProcessor`) and must be passed to the trainer as
``processing_class``; the hub checkpoints load with their full processor.
"""

from __future__ import annotations

from collections.abc import Sequence

from adrpo.llm.tiny import char_tokenizer

AUDIO_TOKEN, AUDIO_BOS, AUDIO_EOS = "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"
OMNI_TOKENS = {  # Qwen2.5-Omni's processor reads these names from its tokenizer
    "audio_token": AUDIO_TOKEN, "audio_bos_token": AUDIO_BOS, "audio_eos_token": AUDIO_EOS,
    "image_token": "<|IMAGE|>", "video_token": "<|VIDEO|>", "vision_bos_token": "<|vision_bos|>",
    "vision_eos_token": "<|vision_eos|>",
}
FAMILIES = ("qwen2_audio", "qwen2_5_omni")

# role: content<eos> per message; an audio part becomes bos, the audio token and eos, which the processor expands
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}:"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for p in m['content'] %}"
    "{% if p['type'] == 'audio' %}" + AUDIO_BOS + AUDIO_TOKEN + AUDIO_EOS +
    "{% elif p['type'] == 'text' %}{{ p['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<eos>{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def audio_tokens(seconds: float, *, frames_per_second: int = 100) -> int:
    """How many audio tokens a clip of ``seconds`` becomes: (((L - 1) // 2 + 1) - 2) // 2 + 1 for L frames."""
    frames = round(seconds * frames_per_second)
    return (((frames - 1) // 2 + 1) - 2) // 2 + 1


def _omni_processor_class():
    from transformers import Qwen2_5OmniProcessor

    class AudioOnlyOmniProcessor(Qwen2_5OmniProcessor):
        """Qwen2.5-Omni's processor without a video processor (transformers' needs torchvision)."""

        def check_argument_for_proper_class(self, argument_name, argument):
            if argument_name == "video_processor" and argument is None:
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

        def save_pretrained(self, save_directory, **kwargs):
            """Save the parts it has (tokenizer, feature extractor, image processor); ``AutoProcessor`` cannot load
            them back as this class without torchvision."""
            for part in (self.tokenizer, self.feature_extractor, self.image_processor):
                part.save_pretrained(save_directory, **kwargs)

    return AudioOnlyOmniProcessor


def tiny_audio_processor(chars: Sequence[str], *, family: str = "qwen2_audio", words: Sequence[str] = (),
                         clip_seconds: int = 1):
    """The family's processor over :func:`char_tokenizer` of ``chars``, the audio tokens, and ``words`` as single
    tokens (e.g. ``"<answer>"``), with the chat template above and a Whisper extractor padding to ``clip_seconds``."""
    from transformers import PreTrainedTokenizerFast, Qwen2AudioProcessor, WhisperFeatureExtractor

    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    base = char_tokenizer(chars)
    # Omni's processor reads its tokens by name (tokenizer.audio_token, ...): name them at construction
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=base.backend_tokenizer, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>",
        extra_special_tokens=OMNI_TOKENS if family == "qwen2_5_omni" else {"audio_token": AUDIO_TOKEN, "audio_bos_token": AUDIO_BOS,
                                                                           "audio_eos_token": AUDIO_EOS},
    )
    tokenizer.add_tokens(list(words))
    tokenizer.chat_template = CHAT_TEMPLATE
    extractor = WhisperFeatureExtractor(feature_size=128, chunk_length=clip_seconds)
    if family == "qwen2_audio":
        return Qwen2AudioProcessor(feature_extractor=extractor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE,
                                   audio_token=AUDIO_TOKEN, audio_bos_token=AUDIO_BOS, audio_eos_token=AUDIO_EOS)
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    return _omni_processor_class()(image_processor=Qwen2VLImageProcessorPil(), video_processor=None, feature_extractor=extractor,
                                   tokenizer=tokenizer, chat_template=CHAT_TEMPLATE)


def tiny_audio_lm(processor, *, family: str = "qwen2_audio", hidden: int = 32, audio_hidden: int = 32, layers: int = 2,
                  heads: int = 2, clip_seconds: int = 1, seed: int = 0):
    """A randomly initialised model of ``family`` for ``processor`` (token ids 0 = pad, 1 = eos)."""
    import torch

    tokenizer = processor.tokenizer
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in OMNI_TOKENS.items() if token in tokenizer.get_vocab()}
    audio = dict(d_model=audio_hidden, encoder_layers=1, encoder_attention_heads=heads, encoder_ffn_dim=2 * audio_hidden,
                 num_mel_bins=128, max_source_positions=50 * clip_seconds)  # the encoder's positions after its stride-2 conv
    text = dict(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=max(1, heads // 2), max_position_embeddings=512,
                pad_token_id=0, eos_token_id=1, bos_token_id=1)
    if family == "qwen2_audio":
        from transformers import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration

        config = Qwen2AudioConfig(audio_config=audio, text_config=text, audio_token_index=ids["audio_token"])
        model_cls = Qwen2AudioForConditionalGeneration
    elif family == "qwen2_5_omni":
        from transformers import Qwen2_5OmniThinkerConfig, Qwen2_5OmniThinkerForConditionalGeneration

        half = hidden // heads // 2  # mrope splits the rotary frequencies into temporal, height and width sections
        sections = [half - 2 * (3 * half // 8), 3 * half // 8, 3 * half // 8]
        config = Qwen2_5OmniThinkerConfig(
            audio_config={**audio, "n_window": 50, "output_dim": hidden},
            vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=hidden, fullatt_block_indexes=[0]),
            text_config={**text, "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": sections}},
            audio_token_index=ids["audio_token"], image_token_index=ids["image_token"], video_token_index=ids["video_token"],
            audio_start_token_id=ids["audio_bos_token"], audio_end_token_id=ids["audio_eos_token"],
            vision_start_token_id=ids["vision_bos_token"],
        )
        model_cls = Qwen2_5OmniThinkerForConditionalGeneration
    else:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    torch.manual_seed(seed)
    return model_cls(config)
