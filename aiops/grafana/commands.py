"""``aiops grafana ...``: provision Grafana over its API, export provisioning files, flush
the annotation outbox. Listed in ``COMMANDS`` for :mod:`aiops.cli`."""

from __future__ import annotations

import json
import logging

import click

logger = logging.getLogger(__name__)

_CONFIG = click.option("-c", "--config", "config_file", type=click.Path(dir_okay=False),
                       help="Config file (default: embedded demo).")


@click.group("grafana")
def grafana_group() -> None:
    """Grafana: dashboards, the aiops datasource, annotations."""


@grafana_group.command("provision")
@_CONFIG
def provision_cmd(config_file: str | None) -> None:
    """Create or update the folder, datasource and dashboards in Grafana (idempotent).

    Dashboards edited in Grafana since aiops wrote them are left alone unless
    grafana.overwrite_edited is set.
    """
    from aiops.cli import load_config_or_exit
    from aiops.errors import ConfigError
    from aiops.grafana.client import GrafanaClient
    from aiops.grafana.dashboards import provision

    cfg = load_config_or_exit(config_file)
    if not cfg.grafana.url:
        raise ConfigError("grafana.url is not set", hint="set grafana.url, or use `aiops grafana export DIR`")
    report = provision(cfg, GrafanaClient.from_config(cfg.grafana))
    for what, names in report.to_dict().items():
        for name in names:
            click.echo(f"{what:15} {name}")
    if report.skipped_edited:
        click.echo("edited in Grafana and kept; set grafana.overwrite_edited to replace them", err=True)


@grafana_group.command("export")
@click.argument("directory", type=click.Path(file_okay=False))
@_CONFIG
@click.option("--dashboards-path", default=None,
              help="Where Grafana will see the dashboards folder (default /var/lib/grafana/dashboards/aiops).")
def export_cmd(directory: str, config_file: str | None, dashboards_path: str | None) -> None:
    """Write Grafana provisioning YAML and dashboard JSON under DIRECTORY (for GitOps)."""
    from aiops.cli import load_config_or_exit
    from aiops.grafana.export import DEFAULT_DASHBOARDS_PATH, export

    cfg = load_config_or_exit(config_file)
    for path in export(cfg, directory, dashboards_path=dashboards_path or DEFAULT_DASHBOARDS_PATH):
        click.echo(str(path))


@grafana_group.command("flush")
@_CONFIG
def flush_cmd(config_file: str | None) -> None:
    """Send the annotations waiting in the outbox now (Grafana, or files without grafana.url)."""
    from aiops.cli import load_config_or_exit
    from aiops.grafana.annotations import Annotator
    from aiops.store import Store

    cfg = load_config_or_exit(config_file)
    stats = Annotator.from_config(cfg.grafana, Store.open(cfg.store.url)).flush()
    click.echo(json.dumps(stats))


COMMANDS: list[click.Command] = [grafana_group]
