"""LLM backends behind one Protocol; :func:`make_backend` picks the configured one."""

from __future__ import annotations

from aiops.config import ExplainConfig
from aiops.explain.llm.base import LLMBackend, Prompt, estimate_tokens
from aiops.explain.llm.template import TemplateBackend

__all__ = ["LLMBackend", "Prompt", "TemplateBackend", "estimate_tokens", "make_backend"]


def make_backend(config: ExplainConfig | None = None) -> LLMBackend:
    """Build (without loading any weights or connecting) the backend named in ``config``."""
    config = config or ExplainConfig()
    if config.backend == "openai":
        from aiops.explain.llm.openai_backend import OpenAIBackend

        return OpenAIBackend(config.openai)
    if config.backend == "transformers":
        from aiops.explain.llm.transformers_backend import TransformersBackend

        return TransformersBackend(config.transformers)
    return TemplateBackend()
