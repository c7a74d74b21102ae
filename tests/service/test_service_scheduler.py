"""Leader lease and the scheduler: one leader runs jobs, another takes over when it dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from aiops.config import AiopsConfig
from aiops.scheduler import LeaderLease, Scheduler
from aiops.store import Store
from tests.fixtures.service import wait_for

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def store(tmp_path):
    return Store.open(f"sqlite:///{tmp_path}/aiops.db")


def config(tmp_path, watches=("a",), every="1s") -> AiopsConfig:
    return AiopsConfig.model_validate(
        {
            "source": {"kind": "synthetic"},
            "store": {"url": f"sqlite:///{tmp_path}/aiops.db"},
            "watches": [
                {"name": n, "query": "http_requests_per_second", "infer_every": every, "fit_every": "1h"}
                for n in watches
            ],
        }
    )


class Recorder:
    def __init__(self):
        self.calls: list[tuple[str, str, float]] = []
        self.lock = threading.Lock()

    def for_node(self, node: str):
        def run_watch(cfg, watch, *, source, store):
            with self.lock:
                self.calls.append((node, watch.name, time.monotonic()))

        return run_watch

    def nodes(self, since: float = 0.0) -> set[str]:
        with self.lock:
            return {n for n, _, t in self.calls if t >= since}


def test_lease_is_exclusive_renewable_and_expires(store):
    a = LeaderLease(store, holder="a", ttl=0.5)
    b = LeaderLease(store, holder="b", ttl=0.5)
    assert a.acquire() and a.is_leader()
    assert not b.acquire() and not b.is_leader()
    assert a.acquire()  # renew
    assert a.current()[0] == "a"
    time.sleep(0.6)
    assert not a.is_leader()  # our own view expires without renewal
    assert b.acquire() and b.current()[0] == "b"
    assert not a.acquire()
    b.release()
    assert b.current() is None and a.acquire()


def test_lease_race_between_threads_has_one_winner(store):
    wins = []
    barrier = threading.Barrier(6)

    def go(i):
        lease = LeaderLease(store, holder=f"n{i}", ttl=30)
        barrier.wait()
        if lease.acquire():
            wins.append(i)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(wins) == 1


def test_one_leader_runs_jobs_and_the_other_takes_over_when_it_dies(tmp_path, store):
    cfg = config(tmp_path)
    rec = Recorder()
    ttl = 1.5
    nodes = {
        name: Scheduler(cfg, store=store, source=object(), run_watch=rec.for_node(name), fit_watch=None,
                        lease_ttl=ttl, holder=name, first_run_delay=0.1)
        for name in ("a", "b")
    }
    nodes["a"].start()
    wait_for(lambda: nodes["a"].lease.is_leader(), 5)
    nodes["b"].start()
    try:
        wait_for(lambda: len(rec.calls) >= 2, 10)
        assert rec.nodes() == {"a"}  # only the leader runs jobs
        assert nodes["a"].jobs() == ["infer:a", "lease"]
        # The leader dies without releasing (kill -9: no goodbye).
        nodes["a"].shutdown(wait=False, release=False)
        died = time.monotonic()
        took = wait_for(lambda: nodes["b"].lease.is_leader(), ttl + 3)
        assert took <= ttl + ttl / 3 + 0.5, took  # within the lease time plus one renewal
        wait_for(lambda: "b" in rec.nodes(died), 5)
        assert rec.nodes(died) == {"b"}
    finally:
        for s in nodes.values():
            s.shutdown(wait=False)


def test_graceful_stop_hands_over_at_once_and_reload_keeps_the_lead(tmp_path, store):
    rec = Recorder()
    a = Scheduler(config(tmp_path), store=store, source=object(), run_watch=rec.for_node("a"), fit_watch=None,
                  lease_ttl=30, holder="a", first_run_delay=0.1).start()
    b = Scheduler(config(tmp_path), store=store, source=object(), run_watch=rec.for_node("b"), fit_watch=None,
                  lease_ttl=0.9, holder="b", first_run_delay=0.1)
    try:
        wait_for(lambda: a.lease.is_leader(), 5)
        a.reload(config(tmp_path, watches=("a", "c")))
        assert a.jobs() == ["infer:a", "infer:c", "lease"]
        assert a.lease.is_leader()
        wait_for(lambda: {w for n, w, _ in rec.calls} == {"a", "c"}, 5)
        b.start()
        time.sleep(0.5)
        assert not b.lease.is_leader()
        a.shutdown()  # releases: b need not wait out a's 30 s lease
        wait_for(lambda: b.lease.is_leader(), 2)
    finally:
        a.shutdown(wait=False)
        b.shutdown(wait=False)


def test_fit_jobs_are_scheduled_when_a_fit_function_exists(tmp_path, store):
    s = Scheduler(config(tmp_path, watches=("a", "b")), store=store, source=object(),
                  run_watch=lambda *a, **k: None, fit_watch=lambda *a, **k: None, lease_ttl=5)
    s.start()
    try:
        assert s.jobs() == ["fit:a", "fit:b", "infer:a", "infer:b", "lease"]
        job = s._sched.get_job("infer:a")
        assert job.coalesce and job.max_instances == 1 and job.misfire_grace_time >= 1
    finally:
        s.shutdown(wait=False)


def test_scheduler_command_runs_watches_reloads_on_sighup_and_stops_on_sigterm(tmp_path):
    """``aiops scheduler`` as its own process, against the synthetic source."""
    cfg_path = tmp_path / "aiops.yaml"
    db = tmp_path / "aiops.db"
    base = {
        "source": {"kind": "synthetic", "synthetic": {"days": 1, "step": "5m"}},
        "store": {"url": f"sqlite:///{db}"},
        "service": {"lease": "5s"},
        "watches": [{"name": "rate", "query": "http_requests_per_second", "history": "1d", "infer_every": "1h"}],
    }
    cfg_path.write_text(yaml.safe_dump(base))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "aiops", "-v", "scheduler", "-c", str(cfg_path)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        store = Store.open(f"sqlite:///{db}")
        ok = lambda: {r["watch"] for r in store.runs() if r["status"] == "ok"}  # noqa: E731
        wait_for(lambda: ok() == {"rate"}, 60, 0.1)
        base["watches"].append({"name": "errors", "query": "http_errors_ratio", "history": "1d", "infer_every": "1h"})
        cfg_path.write_text(yaml.safe_dump(base))
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: ok() == {"rate", "errors"}, 30, 0.1)
        assert LeaderLease(store).current() is not None
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "reloaded" in err
    assert LeaderLease(store).current() is None  # released on the way out
