"""``aiops serve``, ``aiops scheduler`` and ``aiops run``.

``serve`` is the HTTP service (waitress, a production WSGI server) plus the inbox worker
threads; it can run as several replicas. ``scheduler`` runs the watch jobs in its own process
(one leader among any number of replicas). ``run`` is both on one node: the scheduler as a
child process, the service in this one.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
from typing import Any

import click

from aiops.config import AiopsConfig
from aiops.errors import AiopsError

logger = logging.getLogger(__name__)


def build_service(config: AiopsConfig, *, store: Any = None, explain_alert: Any = None, workers: int | None = None):
    """The WSGI app and its (not yet started) inbox worker pool.

    Args:
        config: the validated configuration.
        store: an open store (default: ``config.store.url``).
        explain_alert: the explainer callable (default :func:`~aiops.service.worker.make_explain_alert`).
        workers: worker threads (default ``service.workers``; 0 = no pool, returned as None).
    """
    from aiops.service.app import create_app
    from aiops.service.worker import InboxWorker, WorkerPool, make_explain_alert, make_forward
    from aiops.store import Store

    store = store if store is not None else Store.open(config.store.url)
    app = create_app(config, store)
    n = config.service.workers if workers is None else workers
    if n <= 0:
        return app, None
    svc = config.service
    explain = explain_alert or make_explain_alert(config, store)
    annotator = _annotator(config, store)
    forward = make_forward(svc.forward_url) if svc.forward_url else None
    pool = WorkerPool(
        lambda: InboxWorker(store, explain, lease=svc.lease.seconds, max_attempts=svc.max_attempts,
                            backoff=svc.retry_backoff.seconds, annotator=annotator, forward=forward),
        threads=n,
        tick=annotator.flush if annotator is not None else None,
    )
    app.extensions["aiops"]["inbox_notify"] = pool.notify
    return app, pool


def _annotator(config: AiopsConfig, store: Any) -> Any:
    try:
        from aiops.grafana.annotations import Annotator
    except ImportError:
        return None
    try:
        return Annotator.from_config(config.grafana, store)
    except AiopsError as exc:
        logger.warning("alert annotations are off: %s", exc)
        return None


def make_server(app: Any, host: str, port: int, *, threads: int = 8) -> Any:
    """A waitress server bound now (``port=0`` picks a free one: see ``server.effective_port``)."""
    from waitress import create_server

    try:
        return create_server(app, host=host, port=port, threads=threads, ident="aiops")
    except OSError as exc:
        raise AiopsError(f"cannot listen on {host}:{port}: {exc.strerror}",
                         hint="pick a free port with --port or service.port") from None


def serve(config: AiopsConfig, *, threads: int = 8) -> None:
    """Serve until SIGTERM/SIGINT; the inbox workers finish the alerts in hand."""
    from aiops.service.auth import check_bind

    svc = config.service
    check_bind(svc)
    app, pool = build_service(config)
    server = make_server(app, svc.host, svc.port, threads=threads)

    def _stop(*_: Any) -> None:
        raise SystemExit(0)  # waitress's loop closes on SystemExit

    old = signal.signal(signal.SIGTERM, _stop)
    if pool is not None:
        pool.start()
    logger.warning("aiops service listening on http://%s:%s (%d inbox workers)",
                   svc.host, server.effective_port, len(pool.workers) if pool else 0)
    try:
        server.run()
    finally:
        signal.signal(signal.SIGTERM, old)
        if pool is not None:
            pool.stop()
        logger.warning("aiops service stopped")


def _common(f):
    f = click.option("-c", "--config", "config_file", required=True, type=click.Path(dir_okay=False),
                     help="Config file.")(f)
    return f


def load_config_or_exit(path: str, overrides: dict | None = None) -> AiopsConfig:
    # Imported late: aiops.cli imports this module while it is being built.
    from aiops.cli import load_config_or_exit as load

    return load(path, overrides)


def _setup_logging(cfg: AiopsConfig) -> None:
    from aiops.cli import configure_logging

    if cfg.service.json_logs:
        ctx = click.get_current_context()
        configure_logging(ctx.find_root().params.get("verbose", 0), True)


@click.command("serve")
@_common
@click.option("--host", help="Listen address (default service.host).")
@click.option("--port", type=int, help="Listen port (default service.port).")
@click.option("--workers", type=int, help="Inbox worker threads (default service.workers).")
@click.option("--threads", type=int, default=8, show_default=True, help="HTTP threads.")
def serve_cmd(config_file: str, host: str | None, port: int | None, workers: int | None, threads: int) -> None:
    """Serve the webhook, read API and /metrics, with inbox workers (no scheduler).

    Refuses to listen beyond loopback without service.token unless
    service.allow_insecure_bind is set.
    """
    cfg = load_config_or_exit(config_file, _overrides(host, port, workers))
    _setup_logging(cfg)
    serve(cfg, threads=threads)


@click.command("scheduler")
@_common
def scheduler_cmd(config_file: str) -> None:
    """Run the watch jobs on their schedules (one leader among replicas).

    SIGTERM stops gracefully and hands the lead over; SIGHUP reloads CONFIG.
    """
    from aiops.scheduler import Scheduler

    cfg = load_config_or_exit(config_file)
    _setup_logging(cfg)
    Scheduler(cfg).run_forever(lambda: load_config_or_exit(config_file))


@click.command("run")
@_common
@click.option("--host", help="Listen address (default service.host).")
@click.option("--port", type=int, help="Listen port (default service.port).")
@click.option("--threads", type=int, default=8, show_default=True, help="HTTP threads.")
def run_cmd(config_file: str, host: str | None, port: int | None, threads: int) -> None:
    """Run everything on one node: the scheduler in its own process, and the service."""
    from aiops.service.auth import check_bind

    cfg = load_config_or_exit(config_file, _overrides(host, port, None))
    _setup_logging(cfg)
    check_bind(cfg.service)  # fail before starting the child
    root = click.get_current_context().find_root().params
    argv = [sys.executable, "-m", "aiops"] + ["-v"] * min(root.get("verbose", 0), 2)
    argv += (["--log-json"] if root.get("log_json") else []) + ["scheduler", "-c", config_file]
    child = subprocess.Popen(argv)
    logger.info("scheduler started as process %d", child.pid)
    watcher = threading.Thread(target=_watch_child, args=(child,), daemon=True)
    watcher.start()
    try:
        serve(cfg, threads=threads)
    finally:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(60)
            except subprocess.TimeoutExpired:
                child.kill()


def _watch_child(child: subprocess.Popen) -> None:
    code = child.wait()
    if code not in (0, -signal.SIGTERM):
        logger.error("the scheduler process exited with status %s; watches are not running", code)


def _overrides(host: str | None, port: int | None, workers: int | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if host:
        out["service.host"] = host
    if port is not None:
        out["service.port"] = port
    if workers is not None:
        out["service.workers"] = workers
    return out


COMMANDS = [serve_cmd, scheduler_cmd, run_cmd]
