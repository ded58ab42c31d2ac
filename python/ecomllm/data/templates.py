"""Prompt templates: how an :class:`Example` becomes token ids and completion-only labels.

Two formats:

- ``"plain"`` -- the task-prefix format: ``<s>{prompt}\\n### Answer:{completion}</s>``. The prompt
  already starts with its task prefix ([CLASSIFY], [EXTRACT], [QA]).
- ``"mistral"`` -- Mistral-Instruct's chat template: ``<s>[INST] {prompt} [/INST]{completion}</s>``
  (the single-turn case of Hugging Face's template for Mistral-7B-Instruct).

Prompt and completion are encoded separately and concatenated (as mistral-common does), so the
boundary between the masked prompt and the trained completion is exact: a sentencepiece merge can
never straddle it. The completion's leading word gets sentencepiece's usual dummy-prefix space,
the same as when the model writes it after the prompt at generation time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

from .schema import Example

IGNORE_INDEX = -100  # label of tokens that carry no loss (prompt, padding)

TEMPLATES = ("plain", "mistral")


class TokenizerLike(Protocol):
    """What templates need from a tokenizer (ecomllm.Tokenizer satisfies it)."""
    bos_id: int
    eos_id: int

    def encode(self, text: str | list[str]) -> list[int] | list[list[int]]: ...


def render_prompt(prompt: str, template: str = "plain") -> str:
    """The text the model sees before it writes the completion (BOS excluded)."""
    if template == "plain":
        return f"{prompt}\n### Answer:"
    if template == "mistral":
        return f"[INST] {prompt} [/INST]"
    raise ValueError(f"unknown template {template!r}; expected one of {TEMPLATES}")


def render_text(example: Example, template: str = "plain") -> str:
    """The whole training text of an example (without BOS/EOS), e.g. for pre-training corpora."""
    return f"{render_prompt(example.prompt, template)} {example.completion}"


@dataclass
class EncodedExample:
    """One tokenized example: ids [L] = BOS + prompt + completion + EOS; labels [L] = ids with the
    prompt part (BOS included) set to IGNORE_INDEX."""
    ids: list[int]
    labels: list[int]
    task: str
    truncated: bool = False

    @property
    def prompt_len(self) -> int:
        return sum(1 for x in self.labels if x == IGNORE_INDEX)


def encode_prompt(tokenizer: TokenizerLike, prompt: str, template: str = "plain") -> list[int]:
    """BOS + the rendered prompt: what generation starts from."""
    return [tokenizer.bos_id] + list(tokenizer.encode(render_prompt(prompt, template)))


def encode_example(tokenizer: TokenizerLike, example: Example, template: str = "plain",
                   max_len: int | None = None) -> EncodedExample:
    """Tokenize `example` for completion-only training.

    When the whole exceeds `max_len` the prompt is cut at its end first (its task prefix and the
    start of the product text survive), then, if the completion alone is still too long, the
    completion's tail (EOS included) is cut. `truncated` records that either happened.
    """
    return _assemble(tokenizer, list(tokenizer.encode(render_prompt(example.prompt, template))),
                     list(tokenizer.encode(example.completion)), example.task, max_len)


def _assemble(tokenizer: TokenizerLike, prompt_body: list[int], completion_body: list[int], task: str,
              max_len: int | None) -> EncodedExample:
    prompt_ids = [tokenizer.bos_id] + prompt_body
    completion_ids = completion_body + [tokenizer.eos_id]
    truncated = False
    if max_len is not None:
        if max_len < 2:
            raise ValueError(f"max_len must be >= 2, got {max_len}")
        overflow = len(prompt_ids) + len(completion_ids) - max_len
        if overflow > 0:
            truncated = True
            prompt_ids = prompt_ids[:max(1, len(prompt_ids) - overflow)]  # keep at least BOS
            completion_ids = completion_ids[:max_len - len(prompt_ids)]
    return EncodedExample(prompt_ids + completion_ids, [IGNORE_INDEX] * len(prompt_ids) + completion_ids,
                          task, truncated)


def encode_examples(tokenizer: TokenizerLike, examples: Sequence[Example], template: str = "plain",
                    max_len: int | None = None) -> list[EncodedExample]:
    """encode_example over a list; all texts go through two batched tokenizer calls (ecomllm.Tokenizer
    encodes a list in parallel with the GIL released)."""
    if not examples:
        return []
    prompts = tokenizer.encode([render_prompt(e.prompt, template) for e in examples])
    completions = tokenizer.encode([e.completion for e in examples])
    return [_assemble(tokenizer, list(p), list(c), e.task, max_len)
            for e, p, c in zip(examples, prompts, completions)]
