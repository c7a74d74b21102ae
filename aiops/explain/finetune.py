"""LoRA fine-tuning of the narrator on evidence -> explanation pairs, and its evaluation.

Pairs are JSON lines ``{"evidence": {...Evidence...} | "text", "explanation": "text" | {...}}``,
written by hand or built from the store with :func:`pairs_from_store` (an accepted explanation
keeps its narrative, an edited one uses the operator's text, rejected ones are left out).

Training uses the same prompt the explainer sends (:func:`aiops.explain.explainer.build_messages`)
with the loss on the answer tokens only; PEFT LoRA adapters are trained with the transformers
``Trainer`` and saved with the tokenizer, so ``explain.transformers.model: OUT`` serves them.
:func:`evaluate` reports the faithfulness rate (share of narratives the guard accepts) and
ROUGE-L F1 against the reference, before and after training on held-out pairs.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
from pathlib import Path
from typing import Any, Sequence

from aiops.errors import ExplainError, InputError
from aiops.types import Evidence, EvidenceItem

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- pairs


def _pair_evidence(value: Any) -> Evidence:
    from aiops.explain.explainer import evidence_from_dict

    if isinstance(value, str):
        return Evidence("evidence", [EvidenceItem("note", value, priority=0)])
    return evidence_from_dict(value)


def _pair_target(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("narrative") or value.get("summary") or "")
    return str(value or "")


def load_pairs(path: str | Path) -> list[dict[str, Any]]:
    """Read and check a JSON-lines file of pairs.

    Raises:
        InputError: naming the first bad line.
    """
    p = Path(path)
    try:
        lines = p.read_text().splitlines()
    except OSError as exc:
        raise InputError(f"cannot read pairs file {p}: {exc.strerror}") from None
    pairs = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError("not an object")
            _pair_evidence(row["evidence"])
            if not _pair_target(row["explanation"]).strip():
                raise ValueError("empty explanation")
        except (ValueError, KeyError, TypeError, ExplainError) as exc:
            raise InputError(
                f"{p} line {n}: not a pair ({exc})",
                hint='each line is {"evidence": {"subject": ..., "items": [...]} or text, "explanation": text}',
            ) from None
        pairs.append(row)
    if not pairs:
        raise InputError(f"{p} holds no pairs")
    return pairs


def write_pairs(pairs: Sequence[dict[str, Any]], path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("".join(json.dumps(r, default=str) + "\n" for r in pairs))
    return p


def pairs_from_store(store: Any) -> list[dict[str, Any]]:
    """Pairs from reviewed explanations: accepted keep theirs, edited use the operator's text."""
    import sqlalchemy as sa

    from aiops.store import explanations, feedback

    q = (
        sa.select(explanations.c.evidence, explanations.c.explanation, feedback.c.verdict, feedback.c.text)
        .join(feedback, feedback.c.explanation_id == explanations.c.id)
        .where(feedback.c.verdict.in_(("accepted", "edited")))
        .order_by(explanations.c.id, feedback.c.id)
    )
    with store.engine.connect() as conn:
        rows = list(conn.execute(q))
    latest: dict[str, dict[str, Any]] = {}
    for evidence, expl, verdict, text in rows:
        target = text if verdict == "edited" else _pair_target(expl)
        if target and target.strip():
            latest[json.dumps(evidence, sort_keys=True, default=str)] = {"evidence": evidence, "explanation": target}
    return list(latest.values())


def split_pairs(pairs: Sequence[dict], eval_fraction: float, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Shuffle with ``seed`` and hold out ``eval_fraction`` (at least one pair when there are two)."""
    idx = list(range(len(pairs)))
    random.Random(seed).shuffle(idx)
    n_eval = int(round(len(pairs) * eval_fraction)) if len(pairs) > 1 else 0
    n_eval = min(max(n_eval, 1 if eval_fraction > 0 and len(pairs) > 1 else 0), len(pairs) - 1)
    held = [pairs[i] for i in idx[:n_eval]]
    return [pairs[i] for i in idx[n_eval:]], held


# --------------------------------------------------------------------------- metrics


def _words(text: str) -> list[str]:
    import re

    return re.findall(r"\w+(?:[.,]\d+)*%?", text.lower())


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1 (longest common subsequence of words, beta = 1)."""
    a, b = _words(candidate), _words(reference)
    if not a or not b:
        return 0.0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, 1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    p, r = lcs / len(a), lcs / len(b)
    return 2 * p * r / (p + r)


def evaluate(pairs: Sequence[dict[str, Any]], backend: Any, *, max_candidates: int = 5) -> dict[str, Any]:
    """Generate for each pair's evidence and score the raw narratives.

    Returns:
        ``{"n", "faithfulness", "rouge_l", "examples"}``: the share of narratives the guard
        accepts, mean ROUGE-L F1 against the references, and up to three sample outputs.
    """
    from aiops.explain.explainer import _clean_narrative, build_causes, build_messages, trim_evidence
    from aiops.explain.guard import check_narrative
    from aiops.explain.llm import Prompt

    if not pairs:
        raise InputError("no pairs to evaluate")
    prompts, evs = [], []
    for row in pairs:
        ev = trim_evidence(_pair_evidence(row["evidence"]), backend, max_candidates=max_candidates)
        evs.append(ev)
        prompts.append(Prompt(build_messages(ev, causes=build_causes(ev, max_candidates)), ev))
    outputs = [_clean_narrative(t) for t in backend.generate(prompts)]
    faithful, rouges, examples = 0, [], []
    for row, ev, p, text in zip(pairs, evs, prompts, outputs):
        ok = check_narrative(text, ev, extra_text=p.messages[-1]["content"]).ok
        faithful += ok
        rouges.append(rouge_l(text, _pair_target(row["explanation"])))
        if len(examples) < 3:
            examples.append({"output": text[:300], "faithful": ok})
    n = len(pairs)
    return {"n": n, "faithfulness": faithful / n, "rouge_l": sum(rouges) / n, "examples": examples}


# --------------------------------------------------------------------------- training


def _examples(pairs: Sequence[dict], tokenizer: Any, max_length: int) -> list[dict[str, list[int]]]:
    from aiops.explain.explainer import build_causes, build_messages
    from aiops.explain.llm.transformers_backend import chat_text

    out = []
    for row in pairs:
        ev = _pair_evidence(row["evidence"])
        prompt = chat_text(tokenizer, build_messages(ev, causes=build_causes(ev)))
        add_special = not getattr(tokenizer, "chat_template", None)
        p_ids = tokenizer(prompt, add_special_tokens=add_special)["input_ids"]
        t_ids = tokenizer(" " + _pair_target(row["explanation"]), add_special_tokens=False)["input_ids"]
        t_ids = t_ids + ([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])
        keep_prompt = max(1, max_length - len(t_ids))
        p_ids = p_ids[-keep_prompt:]  # keep the end of the prompt (the question) when too long
        ids = (p_ids + t_ids)[:max_length]
        labels = ([-100] * len(p_ids) + t_ids)[:max_length]
        out.append({"input_ids": ids, "labels": labels})
    return out


def _collate(pad_id: int):
    import torch

    def collate(batch: list[dict[str, list[int]]]) -> dict[str, Any]:
        width = max(len(b["input_ids"]) for b in batch)
        ids = [b["input_ids"] + [pad_id] * (width - len(b["input_ids"])) for b in batch]
        labels = [b["labels"] + [-100] * (width - len(b["labels"])) for b in batch]
        mask = [[1] * len(b["input_ids"]) + [0] * (width - len(b["input_ids"])) for b in batch]
        return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "attention_mask": torch.tensor(mask)}

    return collate


def finetune(
    pairs: Sequence[dict[str, Any]],
    base: str,
    out: str | Path,
    *,
    epochs: float = 1.0,
    max_steps: int = -1,
    learning_rate: float = 2e-4,
    lora_r: int = 8,
    lora_alpha: int = 16,
    batch_size: int = 4,
    eval_fraction: float = 0.2,
    max_length: int = 1024,
    max_new_tokens: int = 128,
    device: str = "auto",
    seed: int = 0,
    run_eval: bool = True,
) -> dict[str, Any]:
    """Train a LoRA adapter for ``base`` on ``pairs``; save it with the tokenizer in ``out``.

    Returns:
        a report: sizes, training loss, and ``before``/``after`` evaluations on held-out pairs
        (also written to ``out/finetune_report.json``).

    Raises:
        InputError: too few pairs. ExplainError: the base model cannot be loaded or trained.
    """
    if len(pairs) < 1:
        raise InputError("fine-tuning needs at least one pair")
    try:
        from peft import LoraConfig, get_peft_model
        from transformers import Trainer, TrainingArguments
    except ImportError as exc:
        raise ExplainError(f"fine-tuning needs peft: {exc}", hint="pip install 'aiops[finetune]'") from None
    from aiops.config import TransformersBackendConfig
    from aiops.explain.llm.transformers_backend import TransformersBackend, load_model

    if Path(base).exists():
        base = str(Path(base).resolve())  # the adapter records where its base model lives
    out = Path(out)
    train, held = split_pairs(pairs, eval_fraction, seed)
    model, tok, dev = load_model(base, device=device, dtype="float32" if device == "cpu" else "auto")
    cfg = TransformersBackendConfig(model=base, device=dev, max_new_tokens=max_new_tokens,
                                    context_tokens=max(256, max_length + max_new_tokens))

    def backend_for(m: Any) -> TransformersBackend:
        b = TransformersBackend(cfg)
        b._loaded = (m, tok, dev)
        return b

    report: dict[str, Any] = {"base": base, "train_pairs": len(train), "eval_pairs": len(held)}
    if run_eval and held:
        report["before"] = evaluate(held, backend_for(model))
    lora = LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=0.0, target_modules="all-linear",
                      task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    model.train()
    args = TrainingArguments(
        output_dir=str(out / "_trainer"),
        per_device_train_batch_size=batch_size,
        num_train_epochs=epochs,
        max_steps=max_steps,
        learning_rate=learning_rate,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=not dev.startswith("cuda"),
        seed=seed,
        disable_tqdm=True,
        remove_unused_columns=False,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=_examples(train, tok, max_length),
        data_collator=_collate(tok.pad_token_id),
    )
    try:
        result = trainer.train()
    except (RuntimeError, ValueError) as exc:
        raise ExplainError(f"training failed: {str(exc).splitlines()[0][:300]}",
                           hint="lower --batch-size or --max-length") from None
    report["train_loss"] = float(result.training_loss)
    report["steps"] = int(result.global_step)
    model.eval()
    if run_eval and held:
        report["after"] = evaluate(held, backend_for(model))
    model.save_pretrained(out)
    tok.save_pretrained(out)
    shutil.rmtree(out / "_trainer", ignore_errors=True)
    (out / "finetune_report.json").write_text(json.dumps(report, indent=2))
    logger.info("LoRA adapter saved to %s (%d steps, loss %.4f)", out, report["steps"], report["train_loss"])
    return report
