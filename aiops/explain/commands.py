"""``aiops`` commands of the explain area.

Each command is a click command defined below and listed in ``COMMANDS`` at the end of the
file; :mod:`aiops.cli` adds every entry of ``COMMANDS`` to the root group. To add a command,
define it in its own section and append it to ``COMMANDS``. Heavy imports stay inside the
command functions so ``aiops --help`` stays fast.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click

logger = logging.getLogger(__name__)

COMMANDS: list[click.Command] = []


# --------------------------------------------------------------------------- aiops rca


@click.command("rca")
@click.option("--input", "input_path", required=True, type=click.Path(dir_okay=False),
              help="Long CSV/Parquet: timestamp,series,value with history before the incident.")
@click.option("--target", required=True, help='The alerting series, e.g. latency{service="checkout"}.')
@click.option("--at", "at", required=True,
              help="When the incident started (ISO 8601, naive = UTC, or unix seconds); causes are searched from one step before.")
@click.option("--graph", "graph_path", type=click.Path(dir_okay=False),
              help="Call graph: adjacency-matrix CSV, a row calls the columns marked 1.")
@click.option("--group-by", help="Rank the values of this label (e.g. service) instead of series.")
@click.option("--lookback", default=None, help="Search for causes from this long before --at (default: one step), e.g. 30m when --at is a late alert.")
@click.option("--top", type=int, default=None, help="Keep only the best N candidates.")
@click.option("--output", "output_path", type=click.Path(dir_okay=False),
              help="Write the ranking as JSON here (default: print it).")
def rca_cmd(input_path, target, at, graph_path, group_by, lookback, top, output_path) -> None:
    """Rank the likely root causes of an anomaly on TARGET at time AT.

    Baselines, onsets and anomaly sizes are computed from the data; with a call graph a
    problem is traced downstream from the target to the callee it started in. The output is
    a JSON list, best first, of {"name", "score", "onset", "evidence"}.
    """
    from aiops.errors import InputError
    from aiops.explain.rca import RcaParams, ServiceGraph, rank_root_causes
    from aiops.sources.files import load_series_file
    from aiops.timeutil import parse_duration, parse_time

    loaded = load_series_file(input_path)
    batch = loaded.batch
    at_ts = parse_time(at)
    graph = ServiceGraph.from_csv(graph_path) if graph_path else None
    params = RcaParams()
    if lookback:
        try:
            lb = parse_duration(lookback)
        except ValueError as exc:
            raise InputError(f"--lookback: {exc}") from None
        step = batch.step or lb
        params.lookback_steps = max(1, int(round(lb / step)))
    ranking = rank_root_causes(
        batch.frame, target, at_ts, labels=batch.labels, graph=graph, group_by=group_by,
        step=batch.step, params=params, limit=top,
    )
    text = json.dumps([c.to_dict() for c in ranking], indent=2)
    if output_path:
        Path(output_path).parent.mkdir(parents=True, exist_ok=True)
        Path(output_path).write_text(text + "\n")
        best = ranking[0] if ranking else None
        click.echo(f"{len(ranking)} candidates written to {output_path}" +
                   (f"; best: {best.name} (score {best.score:.3g})" if best else ""))
    else:
        click.echo(text)


COMMANDS.append(rca_cmd)


# --------------------------------------------------------------------------- aiops kb / llm / ask

from aiops.explain.llm_commands import COMMANDS as _LLM_COMMANDS  # noqa: E402

COMMANDS.extend(_LLM_COMMANDS)
