"""The narrator plug-in point: one Protocol, three backends (template, transformers, openai)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence, runtime_checkable

from aiops.types import Evidence


@dataclass
class Prompt:
    """One narration request: chat messages for an LLM plus the evidence they were built from.

    The template backend reads ``evidence``; LLM backends read ``messages``
    (``[{"role": "system"|"user", "content": str}, ...]``).
    """

    messages: list[dict[str, str]]
    evidence: Evidence
    max_new_tokens: int | None = None
    meta: dict = field(default_factory=dict)


@runtime_checkable
class LLMBackend(Protocol):
    """Turns prompts into narratives. Implementations load lazily and never execute output.

    Attributes:
        name: backend name as in the config (``template``, ``transformers``, ``openai``).
        IS_LLM: False for deterministic backends whose output needs no faithfulness guard.
        context_tokens: the most tokens a prompt plus its answer may take.
        max_new_tokens: the default answer length in tokens.
    """

    name: str
    IS_LLM: bool
    context_tokens: int
    max_new_tokens: int

    def generate(self, prompts: Sequence[Prompt]) -> list[str]:
        """Narratives for ``prompts``, in order (batched where the backend can)."""
        ...

    def count_tokens(self, text: str) -> int:
        """Tokens ``text`` takes in this backend's model (an estimate where unknown)."""
        ...

    def fingerprint(self) -> str:
        """What identifies this backend's output for caching (name and model)."""
        ...


def estimate_tokens(text: str) -> int:
    """Rough token count for models whose tokenizer we do not have (about 4 chars a token)."""
    return max(1, (len(text) + 3) // 4)
