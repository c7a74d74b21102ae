"""Query splitting by label (issue 8) against a real Prometheus (Debian's, backfilled by promtool).

``aiops_test_many{idx="000".."199",job="many"}`` is 200 series; with ``max_series_per_query``
small, a fetch split by ``idx`` must come back identical to one unsplit query while no request
returns more than the cap. A loopback proxy in front of the real server stands in for a Mimir /
Cortex / Thanos query frontend: it refuses requests without ``X-Scope-OrgID`` (as they do) and
records what each request carried, how many series it returned, and how many were in flight.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pandas as pd
import pytest
import requests

from aiops.config import validate_config
from aiops.errors import AuthError, InputError, NoData, TooManySeries
from aiops.pipeline import fetch_watch
from aiops.sources.prometheus import PrometheusSource, _restrict
from tests.fixtures.prom import free_port

pytestmark = pytest.mark.prometheus

STEP = pd.Timedelta("15s")
TENANT = "team-a"


@dataclass
class Frontend:
    """What the tenant-checking proxy saw."""

    url: str
    requests: list[dict] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    delay: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)


@pytest.fixture
def frontend(prometheus):
    """A query frontend double: tenant header required, then the real Prometheus answers."""
    state = Frontend(url="")

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def _proxy(self, method: str):
            tenant = self.headers.get("X-Scope-OrgID")
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) if method == "POST" else None
            if not tenant:
                self._send(401, b"no org id\n", "text/plain")
                return
            with state.lock:
                state.in_flight += 1
                state.max_in_flight = max(state.max_in_flight, state.in_flight)
            try:
                time.sleep(state.delay)
                r = requests.request(method, prometheus.url + self.path, data=body, timeout=30,
                                     headers={"Content-Type": self.headers.get("Content-Type", "")})
            finally:
                with state.lock:
                    state.in_flight -= 1
            params = parse_qs(urlsplit(self.path).query)
            if body:
                params.update(parse_qs(body.decode()))
            n = len(r.json().get("data", {}).get("result", [])) if r.ok else None
            with state.lock:
                state.requests.append({"tenant": tenant, "query": params.get("query", [""])[0], "series": n})
            self._send(r.status_code, r.content, r.headers.get("Content-Type", "application/json"))

        def _send(self, status: int, body: bytes, ctype: str):
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            self._proxy("GET")

        def do_POST(self):
            self._proxy("POST")

    srv = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    state.url = f"http://127.0.0.1:{srv.server_address[1]}"
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield state
    srv.shutdown()
    srv.server_close()


def window(prometheus) -> tuple[pd.Timestamp, pd.Timestamp]:
    return prometheus.end_ts - pd.Timedelta("30m"), prometheus.end_ts


def source(frontend: Frontend, **kw) -> PrometheusSource:
    return PrometheusSource(frontend.url, headers={"X-Scope-OrgID": TENANT}, **kw)


@pytest.mark.parametrize("query", ["aiops_test_many", 'aiops_test_many{job="many"}', "aiops_test_many * 2"])
def test_split_fetch_equals_one_query_and_no_request_exceeds_the_cap(prometheus, frontend, query):
    start, end = window(prometheus)
    whole = PrometheusSource(prometheus.url).fetch(query, start, end, STEP)
    assert len(whole.labels) == 200
    split = source(frontend, max_series_per_query=60, max_concurrency=3).fetch(
        query, start, end, STEP, split_by="idx", max_series=200)
    assert split.labels == whole.labels
    pd.testing.assert_frame_equal(split.frame, whole.frame)
    count, *parts = frontend.requests
    assert count["query"] == f"count by (idx) ({query})" and count["series"] == 200
    assert sorted(p["series"] for p in parts) == [20, 60, 60, 60]  # every group under the cap, none empty
    assert all(p["tenant"] == TENANT for p in frontend.requests)
    if query.endswith("* 2"):
        assert all(p["query"].startswith("(aiops_test_many * 2) and on(idx) (label_replace(") for p in parts)
    else:
        assert all('idx=~"' in p["query"] and p["query"].startswith("aiops_test_many{") for p in parts)


def test_split_requests_are_limited_per_prometheus(prometheus, frontend):
    frontend.delay = 0.2  # long enough that unlimited group queries would all overlap
    start, end = window(prometheus)
    batch = source(frontend, max_series_per_query=20, max_concurrency=2).fetch(
        "aiops_test_many", start, end, STEP, split_by="idx")
    assert len(batch.labels) == 200 and len(frontend.requests) == 11
    assert frontend.max_in_flight == 2


def test_split_without_the_tenant_header_is_refused_clearly(prometheus, frontend):
    start, end = window(prometheus)
    with pytest.raises(AuthError, match=r"refused our credentials \(HTTP 401\): no org id.*X-Scope-OrgID"):
        PrometheusSource(frontend.url).fetch("aiops_test_many", start, end, STEP, split_by="idx")


def test_split_errors_name_the_label_the_cap_and_the_fix(prometheus, frontend):
    start, end = window(prometheus)
    src = source(frontend, max_series_per_query=50)
    with pytest.raises(TooManySeries) as exc:
        src.fetch("aiops_test_many", start, end, STEP, split_by="job")
    assert "200 series have job='many', more than prometheus.max_series_per_query (50)" in str(exc.value)
    assert "split by a finer label (watches[].split_by)" in str(exc.value)
    assert exc.value.query == "aiops_test_many"
    n_before = len(frontend.requests)
    with pytest.raises(TooManySeries, match="about 200 series, more than the limit of 100"):
        src.fetch("aiops_test_many", start, end, STEP, split_by="idx", max_series=100)
    assert len(frontend.requests) == n_before + 1  # refused after the count, before any group query
    with pytest.raises(NoData) as nodata:
        src.fetch("aiops_test_nothing_here", start, end, STEP, split_by="idx")
    assert nodata.value.query == "aiops_test_nothing_here"
    with pytest.raises(InputError, match="split_by must be a label name"):
        src.fetch("aiops_test_many", start, end, STEP, split_by="idx)")


def test_series_without_the_split_label_are_kept(prometheus, frontend):
    """``instance`` exists on aiops_test_long only: the rest fall in the empty-value group."""
    start, end = window(prometheus)
    query = '{job=~"long|gappy"}'
    whole = PrometheusSource(prometheus.url).fetch(query, start, end, STEP)
    split = source(frontend, max_series_per_query=1).fetch(query, start, end, STEP, split_by="instance")
    assert split.labels == whole.labels and len(whole.labels) == 3
    pd.testing.assert_frame_equal(split.frame, whole.frame)
    assert [p["series"] for p in frontend.requests[1:]] == [1, 1, 1]


def test_watch_split_by_reaches_the_source_from_the_config(prometheus, frontend):
    cfg = validate_config({
        "prometheus": {"url": frontend.url, "headers": {"X-Scope-OrgID": TENANT}, "max_series_per_query": 120,
                       "max_concurrency": 2},
        "watches": [{"name": "many", "query": "aiops_test_many", "step": "15s", "history": "30m",
                     "split_by": "idx"}],
    })
    batch = fetch_watch(cfg, cfg.watches[0], source=PrometheusSource.from_config(cfg.prometheus),
                        end=prometheus.end_ts)
    assert len(batch.series_ids) == 200
    count, *parts = frontend.requests  # groups run concurrently: they may finish in any order
    assert count["series"] == 200 and sorted(p["series"] for p in parts) == [80, 120]
    with pytest.raises(Exception, match=r"watches\[0\].split_by: must be a label name"):
        validate_config({"watches": [{"name": "x", "query": "up", "split_by": "a-b"}]})


def test_restrict_escapes_values_for_promql_and_re2():
    assert _restrict('up{job="a"}', "instance", ["10.0.0.1:9100", ""]) == r'up{job="a", instance=~"10\\.0\\.0\\.1:9100|"}'
    assert _restrict("up", "path", ['a"b\\c']) == r'up{path=~"a\"b\\\\c"}'
    assert _restrict("rate(x[5m])", "pod", ["p-1", ""]) == (
        '(rate(x[5m])) and on(pod) (label_replace(vector(1), "pod", "p-1", "", "") or vector(1))'
    )
    assert json.dumps(_restrict("up{}", "a", ["x"])) == json.dumps('up{a=~"x"}')
