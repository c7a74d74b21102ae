"""``aiops kb``, ``aiops llm`` and ``aiops ask``: knowledge base, fine-tuning, questions.

Listed in :data:`aiops.explain.commands.COMMANDS`; heavy imports stay inside the commands.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click

logger = logging.getLogger(__name__)

_CONFIG = click.option("-c", "--config", "config_file", type=click.Path(dir_okay=False),
                       help="Config file (default: embedded demo).")


def _config(config_file: str | None):
    from aiops.cli import load_config_or_exit

    return load_config_or_exit(config_file)


# --------------------------------------------------------------------------- aiops kb


@click.group("kb")
def kb_group() -> None:
    """Knowledge base: BM25 search over runbooks and alert-rule annotations."""


@kb_group.command("index")
@click.argument("runbooks_dir", required=False, type=click.Path(file_okay=False))
@click.option("--rules", "rules_dir", type=click.Path(file_okay=False), help="Folder of Prometheus rule files (*.yml).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Index folder (default: explain.kb_index_dir).")
@_CONFIG
def kb_index_cmd(runbooks_dir, rules_dir, out_dir, config_file) -> None:
    """Index Markdown runbooks in RUNBOOKS_DIR (split at headings) and alerting rules."""
    from aiops.errors import InputError
    from aiops.explain.kb import KnowledgeBase

    cfg = _config(config_file)
    runbooks_dir = runbooks_dir or cfg.explain.runbooks_dir
    if not runbooks_dir and not rules_dir:
        raise InputError("nothing to index", hint="pass RUNBOOKS_DIR and/or --rules DIR")
    kb = KnowledgeBase.build(runbooks_dir, rules_dir)
    out = kb.save(out_dir or cfg.explain.kb_index_dir)
    kinds: dict[str, int] = {}
    for p in kb.passages:
        kinds[p.data.get("kind", "?")] = kinds.get(p.data.get("kind", "?"), 0) + 1
    click.echo(f"indexed {len(kb)} passages ({', '.join(f'{n} {k}' for k, n in sorted(kinds.items()))}) into {out}")


@kb_group.command("search")
@click.argument("text")
@click.option("-k", "k", type=click.IntRange(1, 100), default=5, show_default=True, help="How many passages.")
@click.option("--index", "index_dir", type=click.Path(file_okay=False), help="Index folder (default: explain.kb_index_dir).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_CONFIG
def kb_search_cmd(text, k, index_dir, as_json, config_file) -> None:
    """Show the passages that best match TEXT."""
    from aiops.explain.kb import KnowledgeBase

    kb = KnowledgeBase.load(index_dir or _config(config_file).explain.kb_index_dir)
    hits = kb.search(text, k)
    if as_json:
        click.echo(json.dumps(hits, indent=2))
        return
    if not hits:
        click.echo("no matching passage")
    for h in hits:
        body = " ".join(h["text"].split())
        click.echo(f"{h['score']:.3f}  {h['source']}\n       {body[:200]}")


# --------------------------------------------------------------------------- aiops llm


@click.group("llm")
def llm_group() -> None:
    """Fine-tune and evaluate the local narrator model."""


@llm_group.command("finetune")
@click.option("--data", "data_path", type=click.Path(dir_okay=False), help="Pairs: JSON lines {evidence, explanation}.")
@click.option("--from-store", is_flag=True, help="Build pairs from reviewed explanations in the store.")
@click.option("--base", required=True, help="Base causal LM: a local folder or a cached hub id.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Where the LoRA adapter goes.")
@click.option("--epochs", type=float, default=1.0, show_default=True)
@click.option("--max-steps", type=int, default=-1, help="Stop after this many steps (overrides --epochs).")
@click.option("--lr", "learning_rate", type=float, default=2e-4, show_default=True)
@click.option("--lora-r", type=int, default=8, show_default=True)
@click.option("--batch-size", type=int, default=4, show_default=True)
@click.option("--max-length", type=int, default=1024, show_default=True, help="Tokens per training example.")
@click.option("--eval-fraction", type=click.FloatRange(0, 0.9), default=0.2, show_default=True)
@click.option("--max-new-tokens", type=int, default=128, show_default=True, help="Answer length in evaluations.")
@click.option("--device", default="auto", show_default=True)
@_CONFIG
def llm_finetune_cmd(data_path, from_store, base, out_dir, epochs, max_steps, learning_rate, lora_r, batch_size,
                     max_length, eval_fraction, max_new_tokens, device, config_file) -> None:
    """Train a LoRA adapter on evidence -> explanation pairs; evaluate before and after."""
    from aiops.errors import InputError
    from aiops.explain.finetune import finetune, load_pairs, pairs_from_store, write_pairs

    if bool(data_path) == bool(from_store):
        raise InputError("give exactly one of --data and --from-store")
    if from_store:
        from aiops.store import Store

        pairs = pairs_from_store(Store.open(_config(config_file).store.url))
        if not pairs:
            raise InputError("the store holds no accepted or edited explanations yet")
        write_pairs(pairs, Path(out_dir) / "pairs.jsonl")
    else:
        pairs = load_pairs(data_path)
    report = finetune(pairs, base, out_dir, epochs=epochs, max_steps=max_steps, learning_rate=learning_rate,
                      lora_r=lora_r, batch_size=batch_size, max_length=max_length, eval_fraction=eval_fraction,
                      max_new_tokens=max_new_tokens, device=device)
    click.echo(f"trained {report['steps']} steps on {report['train_pairs']} pairs (loss {report['train_loss']:.4f}); "
               f"adapter in {out_dir}")
    for when in ("before", "after"):
        if when in report:
            r = report[when]
            click.echo(f"  {when:6s} on {r['n']} held-out: faithfulness {r['faithfulness']:.0%}, ROUGE-L {r['rouge_l']:.3f}")


@llm_group.command("eval")
@click.option("--data", "data_path", required=True, type=click.Path(dir_okay=False), help="Pairs (JSON lines).")
@click.option("--model", "model_dir", help="Local model or adapter folder (default: the configured backend).")
@click.option("--max-new-tokens", type=int, default=128, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_CONFIG
def llm_eval_cmd(data_path, model_dir, max_new_tokens, as_json, config_file) -> None:
    """Faithfulness rate (guard) and ROUGE-L of a model's narratives on PAIRS."""
    from aiops.explain.finetune import evaluate, load_pairs
    from aiops.explain.llm import make_backend

    cfg = _config(config_file).explain
    if model_dir:
        cfg = cfg.model_copy(update={"backend": "transformers", "transformers": cfg.transformers.model_copy(
            update={"model": model_dir, "max_new_tokens": max_new_tokens})})
    report = evaluate(load_pairs(data_path), make_backend(cfg))
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(f"{report['n']} pairs: faithfulness {report['faithfulness']:.0%}, ROUGE-L {report['rouge_l']:.3f}")


# --------------------------------------------------------------------------- aiops ask


@click.command("ask")
@click.argument("question")
@click.option("--json", "as_json", is_flag=True, help="Print the explanation as JSON.")
@_CONFIG
def ask_cmd(question, as_json, config_file) -> None:
    """Answer QUESTION (e.g. "why is checkout slow since 10:00?") from events and runbooks."""
    from aiops.explain.ask import answer_question
    from aiops.explain.explainer import render_json, render_markdown
    from aiops.store import Store

    cfg = _config(config_file)
    store = Store.open(cfg.store.url)
    expl = answer_question(question, config=cfg, store=store)
    click.echo(json.dumps(render_json(expl), indent=2) if as_json else render_markdown(expl, max_bytes=8000))


COMMANDS = [kb_group, llm_group, ask_cmd]
