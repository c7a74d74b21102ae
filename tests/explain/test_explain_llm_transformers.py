"""The transformers backend on a tiny causal LM built and saved locally (random weights)."""

import pytest

from aiops.config import ExplainConfig, TransformersBackendConfig
from aiops.errors import ExplainError
from aiops.explain.explainer import Explainer, build_messages
from aiops.explain.llm import Prompt, make_backend
from aiops.explain.llm.transformers_backend import TransformersBackend, chat_text
from tests.explain.test_explain_llm import sample_evidence
from tests.fixtures.tiny_lm import build_tiny_lm


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    return build_tiny_lm(tmp_path_factory.mktemp("tiny_lm"))


def _cfg(path, **kw) -> ExplainConfig:
    return ExplainConfig(backend="transformers", transformers={"model": str(path), "max_new_tokens": 12,
                                                               "context_tokens": 1024, **kw})


def test_loads_lazily_once_and_generates_in_batches(tiny_lm):
    backend = make_backend(_cfg(tiny_lm))
    assert isinstance(backend, TransformersBackend) and backend._loaded is None  # nothing loaded yet
    evs = [sample_evidence(), sample_evidence(n_extra=3)]
    prompts = [Prompt(build_messages(e), e) for e in evs]
    out = backend.generate(prompts)
    model, tok, device = backend._loaded
    assert device == "cpu" and tok.padding_side == "left"
    assert len(out) == 2 and all(isinstance(t, str) for t in out)
    # batched with left padding gives what each prompt gives alone (greedy decoding)
    assert backend.generate(prompts[:1]) == out[:1]
    backend.generate(prompts[1:])
    assert backend._loaded[0] is model  # loaded once
    text = chat_text(tok, prompts[0].messages)
    assert text.startswith("<|system|>") and text.rstrip().endswith("<|assistant|>")


def test_garbage_from_random_weights_is_guarded(tiny_lm):
    expl = Explainer(_cfg(tiny_lm)).explain(sample_evidence())
    reference = Explainer().explain(sample_evidence())
    # a random 2-layer model cannot narrate faithfully: the guard puts the template back
    assert expl.backend == "template" and expl.guard_note
    assert expl.narrative == reference.narrative and expl.causes == reference.causes


def test_plain_layout_without_chat_template(tmp_path):
    path = build_tiny_lm(tmp_path / "plain", chat_template=False)
    backend = TransformersBackend(TransformersBackendConfig(model=str(path), max_new_tokens=4))
    msgs = build_messages(sample_evidence())
    assert chat_text(backend.tokenizer, msgs).endswith("Assistant:")
    assert len(backend.generate([Prompt(msgs, sample_evidence())])) == 1


def test_missing_model_is_a_clear_error(tmp_path):
    backend = TransformersBackend(TransformersBackendConfig(model=str(tmp_path / "nope")))
    with pytest.raises(ExplainError, match="cannot load model"):
        backend.generate([Prompt(build_messages(sample_evidence()), sample_evidence())])
    with pytest.raises(ExplainError, match="no model configured"):
        TransformersBackend(TransformersBackendConfig()).count_tokens("x")
