"""Prompts as the model sees them (`prompt_text`, `prompt_token_ids`: rendered and tokenized as TRL's GRPOTrainer
does), and `check_prompt_lengths`, which refuses prompts longer than the model has room for."""

from __future__ import annotations

from typing import Any

from datasets import Dataset

from ..errors import UserError
from .rows import python_values

def prompt_text(prompt: Any, tokenizer, chat_template_kwargs: dict[str, Any] | None = None) -> str:
    """The prompt text the model is given: a string as it is; a conversation (list of messages) through the chat
    template as TRL's GRPOTrainer renders it (add_generation_prompt, and the recipe's chat_template_kwargs)."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and all(isinstance(message, dict) for message in prompt):
        return tokenizer.apply_chat_template(
            prompt, tokenize=False, add_generation_prompt=True, **(chat_template_kwargs or {})
        )
    raise UserError(f"prompt must be a string or a list of chat messages, got {type(prompt).__name__}: {prompt!r:.80}")


def prompt_token_ids(prompt: Any, tokenizer, chat_template_kwargs: dict[str, Any] | None = None) -> list[int]:
    """The token ids TRL's GRPOTrainer generates from (GRPOTrainer._tokenize_prompts): a conversation through the
    chat template, which writes any start token itself, tokenized without adding special tokens (as
    apply_chat_template(tokenize=True) does); a string tokenized with the tokenizer's special tokens, as TRL's
    processing_class(text=...) call does (a Llama-style tokenizer's BOS)."""
    text = prompt_text(prompt, tokenizer, chat_template_kwargs)
    return tokenizer(text, add_special_tokens=isinstance(prompt, str))["input_ids"]


# Tokens a chat template or special token may add beyond the ones measured on row 1 (see check_prompt_lengths).
_TEMPLATE_SLACK_TOKENS = 32


def check_prompt_lengths(
    dataset: Dataset,
    source: str,
    tokenizer,
    max_positions: int | None,
    completion_tokens: int,
    completion_field: str,
    chat_template_kwargs: dict | None = None,
) -> None:
    """Refuse prompts that leave no room for `completion_tokens` in the model's `max_positions`, naming the first
    such row and how many there are. TRL 1.16 has no max_prompt_length and does not truncate prompts: such a prompt
    would run the model past its positions (a 100k-character one is killed for memory, with no message).

    Cheap on big datasets: a token covers at least one byte of text (byte-level BPE, SentencePiece with byte
    fallback, character vocabularies), so only rows whose text is longer in bytes than the room left, less the
    chat template's tokens measured on row 1, are rendered and tokenized."""
    if max_positions is None:
        return
    room = max_positions - completion_tokens
    if room <= 0:
        raise UserError(f"{completion_field} {completion_tokens} leaves no room for a prompt in the model's "
                        f"{max_positions} positions (max_position_embeddings)")
    prompts = python_values(dataset, "prompt")
    if not prompts:
        return

    def tokens(rows: list[int]) -> list[int]:
        if not rows:
            return []
        texts = [prompt_text(prompts[row], tokenizer, chat_template_kwargs) for row in rows]
        return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def contents(prompt) -> list[str]:
        return [prompt] if isinstance(prompt, str) else [str(message.get("content") or "") for message in prompt]

    def text_bytes(prompt) -> int:
        return sum(len(text.encode()) for text in contents(prompt))

    # The chat template's own tokens: row 1 as the model sees it, less its messages' text tokenized alone.
    content_tokens = sum(len(ids) for ids in tokenizer(contents(prompts[0]), add_special_tokens=False)["input_ids"])
    template_tokens = max(tokens([0])[0] - content_tokens, 0) + _TEMPLATE_SLACK_TOKENS
    candidates = [row for row, prompt in enumerate(prompts) if text_bytes(prompt) + template_tokens > room]
    too_long = [(row, length) for row, length in zip(candidates, tokens(candidates)) if length > room]
    if too_long:
        row, length = too_long[0]
        raise UserError(
            f"dataset '{source}' row {row + 1} (1-based): the prompt, as the model sees it, is {length} tokens; with "
            f"{completion_field} {completion_tokens} that is {length + completion_tokens}, more than the model's "
            f"{max_positions} positions (max_position_embeddings); {len(too_long)} of {len(prompts)} prompts are too "
            f"long, and prompts are not truncated: shorten or drop them, or lower {completion_field}"
        )
