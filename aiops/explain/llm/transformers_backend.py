"""The ``transformers`` backend: a local causal LM (a folder or a hub id already cached).

Loaded once, lazily, on the first prompt; a folder holding a LoRA adapter (from
``aiops llm finetune``) loads its base model plus the adapter. The tokenizer's chat template
is used when it has one. Prompts are generated in batches with left padding and greedy
decoding, so the same evidence gives the same narrative.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Sequence

from aiops.config import TransformersBackendConfig
from aiops.errors import ExplainError
from aiops.explain.llm.base import Prompt

logger = logging.getLogger(__name__)


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``."""
    import torch

    if device != "auto":
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ExplainError(f"device {device!r} requested but no CUDA device is visible",
                               hint="set explain.transformers.device to auto or cpu")
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: str, device: str) -> Any:
    """``auto`` -> bfloat16 on GPUs that support it, float16 on other GPUs, float32 on CPU."""
    import torch

    if dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    except KeyError:
        raise ExplainError(f"unknown dtype {dtype!r}", hint="use auto, float32, bfloat16 or float16") from None


def chat_text(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """The model's input text: its chat template when it has one, else a plain layout."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    parts = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n\n".join(parts) + "\n\nAssistant:"


def load_model(path: str, *, device: str = "auto", dtype: str = "auto") -> tuple[Any, Any, str]:
    """Load ``(model, tokenizer, device)`` from a folder or hub id; LoRA adapter folders too."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not path:
        raise ExplainError("no model configured for the transformers backend",
                           hint="set explain.transformers.model to a local folder or a hub id")
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        if (Path(path) / "adapter_config.json").exists():
            from peft import AutoPeftModelForCausalLM

            model = AutoPeftModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
        else:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
    except (OSError, ValueError, ImportError) as exc:
        raise ExplainError(
            f"cannot load model {path!r}: {str(exc).splitlines()[0][:300]}",
            hint="point explain.transformers.model at a folder written by save_pretrained "
            "(no downloads happen when the hub is unreachable)",
        ) from None
    model.to(dev).eval()
    tokenizer.padding_side = "left"
    tokenizer.truncation_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    logger.info("loaded %s on %s (%s)", path, dev, torch_dtype)
    return model, tokenizer, dev


class TransformersBackend:
    """Narrates with a local causal LM through Hugging Face transformers."""

    name = "transformers"
    IS_LLM = True

    def __init__(self, config: TransformersBackendConfig, *, batch_size: int = 8):
        self.config = config
        self.context_tokens = config.context_tokens
        self.max_new_tokens = config.max_new_tokens
        self.batch_size = batch_size
        self._lock = threading.Lock()
        self._loaded: tuple[Any, Any, str] | None = None

    def fingerprint(self) -> str:
        return f"transformers:{self.config.model}:{self.config.dtype}"

    def _load(self) -> tuple[Any, Any, str]:
        with self._lock:
            if self._loaded is None:
                self._loaded = load_model(self.config.model, device=self.config.device, dtype=self.config.dtype)
            return self._loaded

    @property
    def tokenizer(self) -> Any:
        return self._load()[1]

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def generate(self, prompts: Sequence[Prompt]) -> list[str]:
        out: list[str] = []
        for i in range(0, len(prompts), self.batch_size):
            out += self._generate(prompts[i : i + self.batch_size])
        return out

    def _generate(self, prompts: Sequence[Prompt]) -> list[str]:
        import torch

        model, tok, dev = self._load()
        new_tokens = max(p.max_new_tokens or self.max_new_tokens for p in prompts)
        texts = [chat_text(tok, p.messages) for p in prompts]
        enc = tok(
            texts,
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=max(16, self.context_tokens - new_tokens),
            add_special_tokens=not getattr(tok, "chat_template", None),
        ).to(dev)
        try:
            with torch.inference_mode():
                ids = model.generate(
                    **enc,
                    max_new_tokens=new_tokens,
                    do_sample=False,
                    pad_token_id=tok.pad_token_id,
                )
        except (RuntimeError, ValueError) as exc:
            raise ExplainError(
                f"generation failed on {dev}: {str(exc).splitlines()[0][:300]}",
                hint="lower explain.transformers.max_new_tokens or context_tokens, or use a smaller model",
            ) from None
        return tok.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
