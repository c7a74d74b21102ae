"""The ``openai`` backend: any OpenAI-compatible ``/v1/chat/completions`` server.

vLLM, Ollama, llama.cpp's server and TGI all speak this API. Timeouts, connection errors,
429 and 5xx answers are retried with exponential backoff; other answers fail at once with the
server's own words. The API key is sent as a Bearer token and never logged.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Sequence

import requests

from aiops.config import OpenAIBackendConfig
from aiops.errors import ExplainError
from aiops.explain.llm.base import Prompt, estimate_tokens

logger = logging.getLogger(__name__)

_RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class OpenAIBackend:
    """Narrates through an OpenAI-compatible chat completions endpoint."""

    name = "openai"
    IS_LLM = True

    def __init__(
        self,
        config: OpenAIBackendConfig,
        *,
        context_tokens: int = 8192,
        max_new_tokens: int = 512,
        backoff: float = 0.5,
        session: requests.Session | None = None,
    ):
        self.config = config
        self.context_tokens = context_tokens
        self.max_new_tokens = max_new_tokens
        self.backoff = backoff
        self._session = session

    @property
    def url(self) -> str:
        return self.config.base_url.rstrip("/") + "/chat/completions"

    def fingerprint(self) -> str:
        return f"openai:{self.config.base_url.rstrip('/')}:{self.config.model}"

    def count_tokens(self, text: str) -> int:
        return estimate_tokens(text)

    def generate(self, prompts: Sequence[Prompt]) -> list[str]:
        """One request per prompt (servers batch concurrent requests themselves)."""
        return [self._complete(p) for p in prompts]

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.config.api_key is not None:
            headers["Authorization"] = f"Bearer {self.config.api_key.get_secret_value()}"
        return headers

    def _complete(self, prompt: Prompt) -> str:
        body = {
            "model": self.config.model,
            "messages": prompt.messages,
            "max_tokens": prompt.max_new_tokens or self.max_new_tokens,
            "temperature": 0,
            "stream": False,
        }
        session = self._session or requests.Session()
        attempts = self.config.retries + 1
        last = ""
        for attempt in range(attempts):
            if attempt:
                delay = self.backoff * 2 ** (attempt - 1)
                logger.info("retrying %s in %.2fs (%s)", self.url, delay, last)
                time.sleep(delay)
            try:
                resp = session.post(
                    self.url, json=body, headers=self._headers(), timeout=self.config.timeout.seconds
                )
            except requests.Timeout:
                last = f"no answer within {self.config.timeout}"
                continue
            except requests.ConnectionError as exc:
                last = f"cannot connect: {type(exc).__name__}"
                continue
            if resp.status_code in _RETRY_STATUS:
                last = f"HTTP {resp.status_code}: {_server_message(resp)}"
                continue
            if resp.status_code >= 400:
                raise ExplainError(
                    f"LLM server at {self.url} refused the request: HTTP {resp.status_code}: "
                    f"{_server_message(resp)}",
                    hint=_hint(resp.status_code),
                )
            return _content(resp, self.url)
        raise ExplainError(
            f"LLM server at {self.url} failed after {attempts} attempt{'s' if attempts > 1 else ''}: {last}",
            hint="check explain.openai.base_url and that the server is up; raise explain.openai.timeout "
            "for slow models",
        )


def _server_message(resp: requests.Response) -> str:
    try:
        data = resp.json()
        err = data.get("error", data) if isinstance(data, dict) else data
        msg = err.get("message", err) if isinstance(err, dict) else err
        return str(msg)[:300]
    except ValueError:
        return (resp.text or resp.reason or "").strip()[:300]


def _hint(status: int) -> str:
    if status in (401, 403):
        return "set explain.openai.api_key (or api_key_file) to a key the server accepts"
    if status == 404:
        return "explain.openai.base_url must end in /v1 and explain.openai.model must name a served model"
    return "check explain.openai.model and the server's logs"


def _content(resp: requests.Response, url: str) -> str:
    try:
        data: Any = resp.json()
        content = data["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise ExplainError(
            f"LLM server at {url} answered without choices[0].message.content",
            hint="the server must implement the OpenAI chat completions API",
        ) from None
    return content if isinstance(content, str) else ""
