"""A tiny character-level Qwen2 causal LM, built locally and saved as a normal Hugging Face model directory.

Everything downstream loads it with `AutoModelForCausalLM.from_pretrained(path)` exactly as it would load a hub
model, so the offline path exercises the same loading code as a real run.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM
from transformers.convert_slow_tokenizer import bytes_to_unicode

from ..errors import UserError

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"
ALPHABET = string.printable.replace("\x0b", "").replace("\x0c", "").replace("\r", "")
BYTE_TO_SYMBOL = bytes_to_unicode()

TINY_CONFIG = dict(
    hidden_size=256,
    intermediate_size=768,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    tie_word_embeddings=True,
    rope_theta=10000.0,
)
# Named sizes for `build_tiny_model(size=...)` and the warm-up's `model_size`. "small" (0.8M parameters, 4x fewer
# than "default") makes a step of RL on traces of ~20 characters cheap enough for multi-seed benchmarks on one core.
TINY_SIZES = {
    "default": TINY_CONFIG,
    "small": {**TINY_CONFIG, "hidden_size": 128, "intermediate_size": 384},
}


def tiny_config(size: str) -> dict:
    if size not in TINY_SIZES:
        raise UserError(f"tiny model size must be one of {sorted(TINY_SIZES)}, got {size!r}")
    return TINY_SIZES[size]


# Chat markers as Qwen's chat template writes them; the chat variant ends a reply with IM_END, as Qwen3 does.
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
# Qwen3's chat template in miniature: ChatML turns, and with `enable_thinking=False` (a chat_template_kwargs entry)
# an empty think block opening the reply.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{% if enable_thinking is defined and enable_thinking is false %}{{ '<think>\\n\\n</think>\\n\\n' }}{% endif %}"
    "{% endif %}"
)


def build_char_tokenizer(chat: bool = False) -> PreTrainedTokenizerFast:
    """One token per printable ASCII character: a byte-level BPE with no merges.

    Byte-level (not a plain character vocabulary) because transformers maps every `qwen2` checkpoint to its own
    byte-level `Qwen2Tokenizer` whatever `tokenizer_class` says; with no merges that tokenizer is character-level too.
    `chat=True` adds the ChatML markers as single tokens, IM_END as the end of sequence, and a Qwen-style chat
    template: a stand-in for a hub chat model such as Qwen3.
    """
    specials = [PAD, EOS, UNK, *((IM_START, IM_END) if chat else ())]
    vocab = {tok: i for i, tok in enumerate([*specials, *(BYTE_TO_SYMBOL[ord(c)] for c in ALPHABET)])}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    if chat:
        backend.add_special_tokens([AddedToken(IM_START, special=True), AddedToken(IM_END, special=True)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD,
        eos_token=IM_END if chat else EOS,
        unk_token=UNK,
        padding_side="left",
        model_max_length=TINY_CONFIG["max_position_embeddings"],
    )
    if chat:
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_model(
    output_dir: str | Path, seed: int = 0, size: str = "default", chat: bool = False, **config_overrides
) -> str:
    """Create a randomly initialised tiny model of a named size (TINY_SIZES) and its tokenizer (`chat`: see
    build_char_tokenizer) in `output_dir`; returns the path."""
    output_dir = Path(output_dir)
    tokenizer = build_char_tokenizer(chat=chat)
    tokenizer.model_max_length = config_overrides.get("max_position_embeddings", tokenizer.model_max_length)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        **{**tiny_config(size), **config_overrides},
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return str(output_dir)
