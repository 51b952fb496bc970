"""An offline tiny vision-language model: LLaVA (a CLIP vision tower, a projector, a Qwen2 decoder) built from
config, with its processor (a character-level tokenizer with an ``<image>`` token and a chat template, and
LLaVA's PIL image processor), for tests of TRL's image path without a model hub.

LLaVA rather than Qwen2-VL: ``Qwen2VLProcessor`` requires a video processor, and transformers' video processors
need torchvision, which this environment does not install.

An image of ``image_size`` × ``image_size`` pixels is cut into ``(image_size // patch_size)²`` patches; LLaVA's
``"default"`` feature strategy drops CLIP's class token, so each image becomes that many ``<image>`` tokens in
the prompt (4 with the defaults, 28 × 28 pixels in patches of 14).
"""

from __future__ import annotations

from collections.abc import Sequence

from adrpo.llm.tiny import char_tokenizer

IMAGE_TOKEN = "<image>"

# role: content<eos> per message; image parts become the image token, which the processor expands per patch
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}:"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for p in m['content'] %}"
    "{% if p['type'] == 'image' %}" + IMAGE_TOKEN + "{% elif p['type'] == 'text' %}{{ p['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<eos>{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def tiny_vlm_processor(chars: Sequence[str], *, image_size: int = 28, patch_size: int = 14):
    """A ``LlavaProcessor``: :func:`char_tokenizer` over ``chars`` plus ``<image>``, the chat template above, and
    an image processor that resizes and crops every image to ``image_size`` × ``image_size``."""
    from transformers import LlavaProcessor
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

    tokenizer = char_tokenizer(chars)
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    tokenizer.chat_template = CHAT_TEMPLATE
    image_processor = LlavaImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    return LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=patch_size,
        vision_feature_select_strategy="default", num_additional_image_tokens=1,  # CLIP's class token, dropped
        image_token=IMAGE_TOKEN, chat_template=CHAT_TEMPLATE,
    )


def tiny_vlm(processor, *, hidden: int = 32, vision_hidden: int = 16, layers: int = 1, heads: int = 2,
             image_size: int = 28, patch_size: int = 14, seed: int = 0):
    """A randomly initialised ``LlavaForConditionalGeneration`` for ``processor`` (token ids 0 = pad, 1 = eos)."""
    import torch
    from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration, Qwen2Config

    tokenizer = processor.tokenizer
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=vision_hidden, intermediate_size=2 * vision_hidden, num_hidden_layers=layers,
            num_attention_heads=heads, image_size=image_size, patch_size=patch_size, projection_dim=vision_hidden,
        ),
        text_config=Qwen2Config(
            vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
            num_attention_heads=heads, num_key_value_heads=max(1, heads // 2), max_position_embeddings=256,
            pad_token_id=0, eos_token_id=1, bos_token_id=1,
        ),
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=(image_size // patch_size) ** 2, vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    torch.manual_seed(seed)
    return LlavaForConditionalGeneration(config)
