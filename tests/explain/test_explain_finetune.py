"""LoRA fine-tuning and evaluation on a tiny local LM; pairs from files and from the store."""

import json

import pytest
from click.testing import CliRunner

from aiops.cli import cli
from aiops.errors import InputError
from aiops.explain.explainer import evidence_to_dict
from aiops.explain.finetune import load_pairs, pairs_from_store, rouge_l, split_pairs, write_pairs
from aiops.store import Store, explanations, feedback
from tests.explain.test_explain_llm import sample_evidence
from tests.fixtures.tiny_lm import build_tiny_lm

pytest.importorskip("peft")  # part of the test extra; the fine-tuning path needs it


def _pairs(n=5):
    out = []
    for i in range(n):
        ev = {"subject": f'latency{{service="s{i}"}}',
              "items": [{"kind": "deviation", "text": f"checkout latency is {i}.5 s, expected 0.35 s",
                         "value": i + 0.5, "unit": "s", "priority": 0}]}
        out.append({"evidence": ev, "explanation": f"checkout latency rose to {i}.5 s against 0.35 s expected."})
    return out


def test_rouge_l():
    assert rouge_l("the cat sat on the mat", "the cat sat on the mat") == 1.0
    assert rouge_l("", "x") == 0.0 and rouge_l("a b", "c d") == 0.0
    # LCS "the cat the mat" = 4 of 6 candidate and 4 of 5 reference words
    assert rouge_l("the cat sat on the mat", "the cat ate the mat") == pytest.approx(2 * (4 / 6) * (4 / 5) / (4 / 6 + 4 / 5))


def test_load_pairs_checks_lines(tmp_path):
    p = write_pairs(_pairs(2), tmp_path / "pairs.jsonl")
    assert len(load_pairs(p)) == 2
    p.write_text(p.read_text() + '{"evidence": "text only", "explanation": ""}\n')
    with pytest.raises(InputError, match="line 3"):
        load_pairs(p)
    train, held = split_pairs(_pairs(5), 0.2)
    assert len(train) == 4 and len(held) == 1


def test_pairs_from_store_use_feedback(tmp_path):
    store = Store.open(f"sqlite:///{tmp_path / 'a.db'}")
    ev = evidence_to_dict(sample_evidence())
    with store.begin() as conn:
        for i, verdict in enumerate(("accepted", "edited", "rejected")):
            ev_i = dict(ev, subject=f"s{i}")
            eid = conn.execute(explanations.insert().values(
                subject_kind="event", subject_ref=str(i), backend="template", evidence=ev_i,
                explanation={"narrative": f"narrative {i}", "summary": "s"}, markdown="m")).inserted_primary_key[0]
            conn.execute(feedback.insert().values(explanation_id=eid, verdict=verdict,
                                                  text="operator text" if verdict == "edited" else None))
    pairs = pairs_from_store(store)
    assert [(p["evidence"]["subject"], p["explanation"]) for p in pairs] == [
        ("s0", "narrative 0"), ("s1", "operator text")]


def test_finetune_one_step_and_eval(tmp_path):
    base = build_tiny_lm(tmp_path / "base")
    data = write_pairs(_pairs(5), tmp_path / "pairs.jsonl")
    out = tmp_path / "adapter"
    res = CliRunner().invoke(cli, ["llm", "finetune", "--data", str(data), "--base", str(base), "--out", str(out),
                                   "--max-steps", "1", "--batch-size", "2", "--max-length", "512", "--max-new-tokens", "8",
                                   "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "trained 1 steps on 4 pairs" in res.output and "before" in res.output and "after" in res.output
    report = json.loads((out / "finetune_report.json").read_text())
    assert report["steps"] == 1 and report["train_loss"] > 0
    assert report["train_pairs"] == 4 and report["eval_pairs"] == 1
    for when in ("before", "after"):
        assert report[when]["n"] == 1 and 0 <= report[when]["faithfulness"] <= 1 and 0 <= report[when]["rouge_l"] <= 1
    assert (out / "adapter_config.json").exists() and (out / "adapter_model.safetensors").exists()
    from safetensors.torch import load_file

    lora_b = [v for k, v in load_file(out / "adapter_model.safetensors").items() if "lora_B" in k]
    assert lora_b and any(float(v.abs().max()) > 0 for v in lora_b)  # B starts at zero: the step trained it
    # the adapter folder serves through the same backend path, and `aiops llm eval` scores it
    res = CliRunner().invoke(cli, ["llm", "eval", "--data", str(data), "--model", str(out),
                                   "--max-new-tokens", "8", "--json"])
    assert res.exit_code == 0, res.output
    ev = json.loads(res.output[res.output.index("{"):])
    assert ev["n"] == 5 and 0 <= ev["faithfulness"] <= 1 and len(ev["examples"]) == 3
