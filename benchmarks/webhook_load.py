"""Webhook load: alerts in bursts from concurrent senders against ``aiops serve`` on loopback.

``aiops serve`` runs as its own process (waitress, ``--threads`` HTTP threads, the inbox
workers explaining while alerts arrive) on a fresh SQLite store. Each of ``--senders`` threads
posts its share of ``--alerts`` unique alerts as Alertmanager would: ``--batch`` alerts per
request (version 4 payload, bearer token), ``--burst`` requests back to back, then a
``--pause``. With ``--resend`` every request is sent twice (Alertmanager re-sends groups), so
half the accepted alerts are duplicates that must not be stored again.

Measured: accept latency per request (POST to 202; p50/p99/max), accepted alerts per second
over the send phase, and, from the store afterwards, lost (sent but not stored) and stored
twice. With ``--wait-explained`` the run also waits for the workers to explain every alert
and reports the explanation latency from aiops's own ``/metrics`` histogram.

Usage: ``python benchmarks/webhook_load.py [--alerts 10000] [--senders 8] [--batch 10]
[--out benchmarks/results/webhook_load.json]``. The suite runs a small version
(``tests/service/test_service_load.py``) through :func:`send_load` and :func:`check_stored`.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import requests

TOKEN = "load-test-token"


def make_alerts(n: int, *, prefix: str = "load") -> list[dict[str, Any]]:
    """``n`` distinct firing alerts (distinct fingerprints), shaped like Alertmanager's."""
    out = []
    for i in range(n):
        fp = hashlib.sha256(f"{prefix}:{i}".encode()).hexdigest()[:16]
        out.append({
            "status": "firing",
            "labels": {"alertname": f"LoadTest{i % 50}", "instance": f"node-{i % 200}:9100", "job": "node",
                       "severity": "warning" if i % 3 else "critical"},
            "annotations": {"summary": f"synthetic alert {i}", "description": "load test"},
            "startsAt": "2026-11-22T10:00:00.000Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus.local:9090/graph?g0.expr=up+%3D%3D+0&g0.tab=1",
            "fingerprint": fp,
        })
    return out


@dataclass
class LoadResult:
    latencies: list[float] = field(default_factory=list)  # seconds per request
    statuses: dict[int, int] = field(default_factory=dict)
    accepted_alerts: int = 0  # in 202 answers (duplicates included)
    stored: int = 0  # "stored" in 202 answers
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        lat = np.array(self.latencies) * 1000 if self.latencies else np.array([np.nan])
        return {
            "requests": len(self.latencies), "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "accepted_alerts": self.accepted_alerts, "stored_in_answers": self.stored,
            "seconds": round(self.seconds, 3),
            "alerts_per_s": round(self.accepted_alerts / self.seconds, 1) if self.seconds else None,
            "latency_ms": {"p50": round(float(np.percentile(lat, 50)), 2), "p99": round(float(np.percentile(lat, 99)), 2),
                           "max": round(float(lat.max()), 2)},
            "errors": self.errors[:10],
        }


def send_load(url: str, token: str, alerts: list[dict[str, Any]], *, senders: int = 4, batch: int = 10,
              burst: int = 10, pause: float = 0.0, resend: bool = False, timeout: float = 30.0) -> LoadResult:
    """Post ``alerts`` to ``url`` (the webhook) from ``senders`` threads; every request is timed."""
    result = LoadResult()
    lock = threading.Lock()
    shares = [alerts[i::senders] for i in range(senders)]
    start = threading.Barrier(senders + 1)

    def sender(k: int) -> None:
        session = requests.Session()
        headers = {"Authorization": f"Bearer {token}"}
        mine = shares[k]
        bodies = [{"version": "4", "status": "firing", "receiver": "aiops", "groupKey": f"{{}}:{{sender=\"{k}\"}}",
                   "alerts": mine[i:i + batch]} for i in range(0, len(mine), batch)]
        if resend:
            bodies = [b for b in bodies for _ in (0, 1)]
        start.wait()
        for j, body in enumerate(bodies):
            t0 = time.perf_counter()
            try:
                r = session.post(url, json=body, headers=headers, timeout=timeout)
                took = time.perf_counter() - t0
                data = r.json() if r.status_code == 202 else {}
                err = None if r.status_code == 202 else f"HTTP {r.status_code}: {r.text[:200]}"
            except requests.RequestException as exc:
                took, data, err = time.perf_counter() - t0, {}, f"{type(exc).__name__}: {exc}"
            with lock:
                result.latencies.append(took)
                code = int(r.status_code) if err is None or err.startswith("HTTP") else 0
                result.statuses[code] = result.statuses.get(code, 0) + 1
                result.accepted_alerts += int(data.get("alerts", 0))
                result.stored += int(data.get("stored", 0))
                if err:
                    result.errors.append(err)
            if pause and (j + 1) % burst == 0:
                time.sleep(pause)
        session.close()

    threads = [threading.Thread(target=sender, args=(k,), daemon=True) for k in range(senders)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    result.seconds = time.perf_counter() - t0
    return result


def check_stored(store: Any, alerts: list[dict[str, Any]]) -> dict[str, int]:
    """Compare the inbox with what was sent: ``{"sent", "stored", "lost", "stored_twice"}``."""
    import sqlalchemy as sa

    from aiops.store import alert_inbox

    c = alert_inbox.c
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(c.fingerprint, sa.func.count()).group_by(c.fingerprint, c.starts_at, c.status)).all()
    counts = dict(rows)
    sent = {a["fingerprint"] for a in alerts}
    return {
        "sent": len(sent),
        "stored": sum(1 for fp in sent if fp in counts),
        "lost": sum(1 for fp in sent if fp not in counts),
        "stored_twice": sum(1 for n in counts.values() if n > 1),
    }


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _metric(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{}"):
            return float(line.rsplit(" ", 1)[1])
    return None


def _latency_quantile(text: str, q: float) -> float | None:
    """A quantile from the cumulative ``aiops_alert_explanation_latency_seconds`` buckets."""
    buckets = []
    for line in text.splitlines():
        if line.startswith("aiops_alert_explanation_latency_seconds_bucket"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float("inf") if le == "+Inf" else float(le), float(line.rsplit(" ", 1)[1])))
    if not buckets or buckets[-1][1] == 0:
        return None
    total = buckets[-1][1]
    for le, n in buckets:
        if n >= q * total:
            return le
    return None


def main() -> None:
    from _common import machine, write_json

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--alerts", type=int, default=10_000)
    ap.add_argument("--senders", type=int, default=8)
    ap.add_argument("--batch", type=int, default=10, help="alerts per request")
    ap.add_argument("--burst", type=int, default=20, help="requests per burst")
    ap.add_argument("--pause", type=float, default=0.05, help="seconds between bursts")
    ap.add_argument("--resend", action="store_true", help="send every request twice")
    ap.add_argument("--threads", type=int, default=8, help="aiops serve HTTP threads")
    ap.add_argument("--workers", type=int, default=2, help="inbox worker threads explaining meanwhile")
    ap.add_argument("--wait-explained", type=float, default=0.0, metavar="S",
                    help="then wait up to S seconds for every alert to be explained")
    ap.add_argument("--workdir", help="folder for the store and config (default: a temporary one)")
    ap.add_argument("--out", default="benchmarks/results/webhook_load.json")
    args = ap.parse_args()

    from aiops.store import Store

    work = Path(args.workdir or tempfile.mkdtemp(prefix="aiops-load-"))
    work.mkdir(parents=True, exist_ok=True)
    db = work / "aiops.db"
    if db.exists():
        db.unlink()
    port = _free_port()
    (work / "aiops.yaml").write_text(
        f"store: {{url: 'sqlite:///{db}'}}\n"
        f"grafana: {{output_dir: '{work / 'grafana'}'}}\n"
        f"service: {{token: {TOKEN}, workers: {args.workers}, scheduler_required: false, "
        f"max_alerts_per_request: {max(args.batch, 1000)}}}\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    log = open(work / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "aiops", "serve", "-c", str(work / "aiops.yaml"),
                             "--port", str(port), "--threads", str(args.threads)], stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                if requests.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise SystemExit(f"aiops serve did not start; see {work / 'serve.log'}")
            time.sleep(0.2)
        alerts = make_alerts(args.alerts)
        res = send_load(f"{base}/api/v1/alertmanager", TOKEN, alerts, senders=args.senders, batch=args.batch,
                        burst=args.burst, pause=args.pause, resend=args.resend)
        store = Store.open(f"sqlite:///{db}")
        stored = check_stored(store, alerts)
        record: dict[str, Any] = {"machine": machine(), "args": vars(args), "send": res.summary(), "store": stored}
        if args.wait_explained > 0:
            t0 = time.perf_counter()
            deadline = time.time() + args.wait_explained
            text = ""
            while time.time() < deadline:
                text = requests.get(f"{base}/metrics", timeout=30).text
                if _metric(text, 'aiops_inbox_alerts{state="done"}') == args.alerts:
                    break
                time.sleep(1)
            record["explained"] = {
                "done": _metric(text, 'aiops_inbox_alerts{state="done"}'),
                "dead": _metric(text, 'aiops_inbox_alerts{state="dead"}'),
                "seconds_after_send": round(time.perf_counter() - t0, 1),
                "latency_p50_s_le": _latency_quantile(text, 0.5), "latency_p99_s_le": _latency_quantile(text, 0.99),
            }
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    s = record["send"]
    print(f"{s['requests']} requests, {s['accepted_alerts']} alerts accepted in {s['seconds']:.1f}s "
          f"({s['alerts_per_s']} alerts/s); accept latency p50 {s['latency_ms']['p50']} ms, "
          f"p99 {s['latency_ms']['p99']} ms, max {s['latency_ms']['max']} ms; statuses {s['statuses']}")
    print(f"store: {record['store']}")
    if "explained" in record:
        print(f"explained: {record['explained']}")
    write_json(args.out, record)
    if record["store"]["lost"] or record["store"]["stored_twice"] or s["errors"]:
        raise SystemExit("FAILED: alerts lost, stored twice, or refused")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
