"""The ``aiops`` command.

Only this module configures logging. Commands that need heavy libraries (torch, transformers)
import them inside the command, so ``aiops --help`` stays fast.

Other areas add commands by listing a module in ``_COMMAND_MODULES`` that exports
``COMMANDS`` (a list of click commands or groups).
"""

from __future__ import annotations

import importlib
import json
import logging
import sys
from typing import Any

import click

from aiops import __version__
from aiops.errors import AiopsError, ConfigError

logger = logging.getLogger(__name__)

_COMMAND_MODULES = (
    "aiops.models.commands",
    "aiops.explain.commands",
    "aiops.grafana.commands",
    "aiops.service.commands",
)

EPILOG = """\b
Start here:
  aiops demo                         run the whole pipeline on the embedded synthetic shop
  aiops check-config aiops.yaml      validate a config file, naming each bad field
  aiops fetch -c aiops.yaml WATCH    run one watch's query once and show what came back
Configuration: see docs/configuration.md; every key can be overridden with AIOPS_... env vars.
"""


class _SecretFilter(logging.Filter):
    """Blank known secret values from log records (tokens, passwords)."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            msg = record.getMessage()
            for s in self.secrets:
                if s and s in msg:
                    msg = msg.replace(s, "****")
            record.msg, record.args = msg, None
        return True


SECRET_FILTER = _SecretFilter()


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def configure_logging(verbose: int = 0, json_logs: bool = False) -> None:
    level = logging.WARNING - 10 * min(verbose, 2)
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(SECRET_FILTER)
    handler.setFormatter(
        _JsonFormatter() if json_logs else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("urllib3", "niquests", "httpx", "filelock", "bm25s", "apscheduler"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


def register_secrets(config: Any) -> None:
    """Add every SecretStr in a config tree to the log filter."""
    from pydantic import BaseModel, SecretStr

    def walk(obj: Any) -> None:
        if isinstance(obj, SecretStr):
            SECRET_FILTER.secrets.add(obj.get_secret_value())
        elif isinstance(obj, BaseModel):
            for name in type(obj).model_fields:
                walk(getattr(obj, name))
        elif isinstance(obj, (list, tuple)):
            for x in obj:
                walk(x)
        elif isinstance(obj, dict):
            for x in obj.values():
                walk(x)

    walk(config)


def load_config_or_exit(path: str | None, overrides: dict | None = None):
    from aiops.config import load_config

    cfg = load_config(path, overrides=overrides)
    register_secrets(cfg)
    return cfg


class AiopsGroup(click.Group):
    """Turns AiopsError into one clear message and exit status 2 (no traceback)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except AiopsError as exc:
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug("details", exc_info=True)
            click.echo(f"error: {exc}", err=True)
            ctx.exit(2)


@click.group(cls=AiopsGroup, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="aiops")
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
@click.option("--log-json", is_flag=True, help="Log as JSON lines (for log shippers).")
def cli(verbose: int, log_json: bool) -> None:
    """aiops: forecasts, anomaly detection and grounded explanations for Prometheus and Grafana.

    Watches (PromQL queries in a config file) are fetched on a schedule, forecast with
    calibrated bands, scored for anomalies, explained from evidence the code computed, and
    published to Grafana as dashboards and annotations.
    """
    configure_logging(verbose, log_json)


@cli.command("check-config")
@click.argument("config_file", type=click.Path(dir_okay=False))
@click.option("--show", is_flag=True, help="Print the effective config (secrets masked).")
def check_config(config_file: str, show: bool) -> None:
    """Validate CONFIG_FILE; exit 0 when good, 2 naming each bad field by YAML path."""
    try:
        cfg = load_config_or_exit(config_file)
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)
    names = ", ".join(w.name for w in cfg.watches) or "no watches"
    click.echo(f"{config_file}: OK ({len(cfg.watches)} watch{'es' if len(cfg.watches) != 1 else ''}: {names})")
    if show:
        import yaml

        click.echo(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))


@cli.command("config-reference")
def config_reference() -> None:
    """Print the configuration reference (Markdown) generated from the config models."""
    from aiops.configref import reference

    click.echo(reference(), nl=False)


@cli.command("docs-sync")
@click.option("--check", is_flag=True, help="Change nothing; exit 1 when a generated section is stale.")
@click.option("--root", type=click.Path(file_okay=False), default=None, help="Checkout root (default: found from here).")
def docs_sync(check: bool, root: str | None) -> None:
    """Regenerate docs/configuration.md and README.md's configuration and benchmark sections."""
    from pathlib import Path

    from aiops.docsync import find_root, sync

    stale = sync(find_root(Path(root) if root else None), write=not check)
    for path in stale:
        click.echo(f"{'stale' if check else 'rewrote'}: {path}")
    if check and stale:
        sys.exit(1)


@cli.command("fetch")
@click.option("-c", "--config", "config_file", type=click.Path(dir_okay=False), help="Config file (default: embedded demo).")
@click.argument("watch_name")
@click.option("--end", default="now", show_default=True, help="End of the range (ISO 8601, unix seconds, now-1h).")
@click.option("--history", default=None, help="Override the watch's history window (e.g. 1d).")
@click.option("--json", "as_json", is_flag=True, help="Print the series as JSON instead of a table.")
def fetch_cmd(config_file: str | None, watch_name: str, end: str, history: str | None, as_json: bool) -> None:
    """Run one watch's query once and print what it fetched."""
    from aiops.pipeline import fetch_watch
    from aiops.timeutil import parse_duration, parse_time

    cfg = load_config_or_exit(config_file)
    watch = cfg.watch(watch_name)
    batch = fetch_watch(cfg, watch, end=parse_time(end), history=parse_duration(history) if history else None)
    f = batch.frame
    if as_json:
        out = []
        for sid, g in f.groupby("series_id"):
            out.append(
                {
                    "series": sid,
                    "labels": batch.labels.get(sid, {}),
                    "points": int(g["value"].notna().sum()),
                    "missing": int(g["value"].isna().sum()),
                    "first": g["ts"].min().isoformat(),
                    "last": g["ts"].max().isoformat(),
                }
            )
        click.echo(json.dumps(out, indent=2))
        return
    click.echo(f"watch {watch.name}: {len(batch.series_ids)} series, {len(f)} steps of {watch.step}")
    for sid, g in f.groupby("series_id"):
        v = g["value"]
        click.echo(
            f"  {sid}\n    {int(v.notna().sum())} points, {int(v.isna().sum())} missing, "
            f"{g['ts'].min():%Y-%m-%d %H:%M} .. {g['ts'].max():%Y-%m-%d %H:%M} UTC, "
            f"last={v.dropna().iloc[-1] if v.notna().any() else float('nan'):.6g}"
        )


@cli.command("demo")
@click.option("-c", "--config", "config_file", type=click.Path(dir_okay=False), help="Config file (default: embedded synthetic shop).")
@click.option("--prometheus", "prometheus_url", help="Run against this Prometheus instead of synthetic data.")
@click.option("--grafana", "grafana_url", help="Publish to this Grafana (token from AIOPS_GRAFANA__TOKEN).")
@click.option("--output", "output_dir", help="Folder for the report, files and store (default aiops-output).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def demo_cmd(config_file, prometheus_url, grafana_url, output_dir, quiet) -> None:
    """Run the whole pipeline once over every watch and summarise what it found.

    With no options it needs no servers: a synthetic online shop (with a seeded incident),
    a SQLite store and Grafana files under ./aiops-output.
    """
    from aiops.pipeline import run_demo

    overrides: dict[str, Any] = {}
    if prometheus_url:
        overrides["source.kind"] = "prometheus"
        overrides["prometheus.url"] = prometheus_url
    if grafana_url:
        overrides["grafana.url"] = grafana_url
    if output_dir:
        overrides["output_dir"] = output_dir
        overrides["store.url"] = f"sqlite:///{output_dir}/aiops.db"
        overrides["grafana.output_dir"] = f"{output_dir}/grafana"
    cfg = load_config_or_exit(config_file, overrides)
    summary = run_demo(cfg, progress=not quiet)
    click.echo(summary.render())


def _load_command_modules() -> None:
    for name in _COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            # The area is not built yet; any other missing import is a real error.
            if exc.name and name.startswith(exc.name):
                continue
            raise
        for cmd in getattr(mod, "COMMANDS", []):
            cli.add_command(cmd)


_load_command_modules()


def main() -> None:
    cli(prog_name="aiops")
