"""PrometheusSource against a real Prometheus (backfilled by promtool) and a loopback double
for what a real server cannot show (headers received, 503s, slow answers)."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import ssl
import subprocess
import threading
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pandas as pd
import pytest
import requests

from aiops.config import PrometheusConfig
from aiops.errors import AuthError, BadQuery, NoData, SourceUnavailable, TooManySeries
from aiops.sources.base import MetricSource
from aiops.sources.prometheus import PrometheusSource
from aiops.types import series_id
from tests.fixtures.prom import free_port

STEP = pd.Timedelta("15s")
LOOKBACK = 300  # Prometheus's default lookback delta, seconds


def ts(sec: int) -> pd.Timestamp:
    return pd.Timestamp(sec, unit="s", tz="UTC")


def counting(src: PrometheusSource) -> list[tuple[float, float, float]]:
    """Record (start, end, step) of every query_range the source sends."""
    calls: list[tuple[float, float, float]] = []
    orig = src.client.custom_query_range

    def spy(query, start_time, end_time, step, *a, **kw):
        calls.append((start_time.timestamp(), end_time.timestamp(), float(step)))
        return orig(query, start_time, end_time, step, *a, **kw)

    src.client.custom_query_range = spy
    return calls


@pytest.mark.prometheus
def test_long_range_is_chunked_complete_and_deduplicated(prometheus):
    start, end = prometheus.end - 2 * 86400, prometheus.end
    n_points = 2 * 86400 // 15 + 1
    # the server itself refuses this range in one request
    r = requests.get(f"{prometheus.url}/api/v1/query_range",
                     params={"query": "aiops_test_long", "start": start, "end": end, "step": 15})
    assert r.status_code == 400 and "11,000" in r.json()["error"]

    src = PrometheusSource(prometheus.url)
    assert isinstance(src, MetricSource)
    calls = counting(src)
    batch = src.fetch("aiops_test_long", ts(start), ts(end), STEP, watch="long")

    assert len(calls) == 2
    assert all((e - s) / st + 1 <= 11000 for s, e, st in calls)
    assert batch.step == STEP and batch.watch == "long"
    assert len(batch.labels) == 2
    expected_ts = pd.date_range(ts(start), ts(end), freq="15s")
    for sid, g in batch.frame.groupby("series_id"):
        assert len(g) == n_points and g["ts"].is_unique
        assert (pd.DatetimeIndex(g["ts"]) == expected_ts).all()
        truth = prometheus.data[sid].as_series().reindex(expected_ts)
        np.testing.assert_array_equal(g["value"].to_numpy(), truth.to_numpy())


@pytest.mark.prometheus
def test_small_chunks_stitch_to_the_same_frame_and_align_to_grid(prometheus):
    # start 7 s off the grid: the first point is the next multiple of the step
    start, end = prometheus.end - 2 * 86400 + 7, prometheus.end
    whole = PrometheusSource(prometheus.url).fetch("aiops_test_long", ts(start), ts(end), STEP)
    small = PrometheusSource(prometheus.url, max_points_per_request=1000)
    calls = counting(small)
    pieces = small.fetch("aiops_test_long", ts(start), ts(end), STEP)
    n_points = (end - (start - 7 + 15)) // 15 + 1
    assert len(calls) == math.ceil(n_points / 1000)
    assert all((e - s) / st + 1 <= 1000 for s, e, st in calls)
    # consecutive chunks neither overlap nor leave a hole
    assert all(b[0] - a[1] == 15 for a, b in zip(calls, calls[1:]))
    pd.testing.assert_frame_equal(whole.frame, pieces.frame)
    assert pieces.frame["ts"].min() == ts(start - 7 + 15)


@pytest.mark.prometheus
def test_many_series_get_stable_ids_and_labels(prometheus):
    src = PrometheusSource(prometheus.url)
    start, end = prometheus.end - 3600, prometheus.end
    a = src.fetch('aiops_test_many{job="many"}', ts(start), ts(end), STEP, max_series=200)
    b = src.fetch('aiops_test_many{job="many"}', ts(start), ts(end), STEP)
    assert len(a.labels) == 200
    assert list(a.labels) == list(b.labels) == sorted(a.labels)
    for sid, labels in a.labels.items():
        assert sid == series_id(labels)
        assert labels["job"] == "many" and labels["__name__"] == "aiops_test_many"
    assert a.frame.groupby("series_id").size().eq(241).all()
    assert list(a.frame["series_id"].unique()) == list(a.labels)
    sid = series_id({"__name__": "aiops_test_many", "job": "many", "idx": "123"})
    got = a.frame[a.frame["series_id"] == sid]["value"].to_numpy()
    np.testing.assert_array_equal(got, prometheus.data[sid].values)


@pytest.mark.prometheus
def test_gaps_nan_and_inf_stay_missing(prometheus, caplog):
    start, end = prometheus.end - 6 * 3600, prometheus.end
    src = PrometheusSource(prometheus.url)
    with caplog.at_level(logging.WARNING, logger="aiops.sources.prometheus"):
        batch = src.fetch("aiops_test_gappy", ts(start), ts(end), STEP, watch="gappy")
    assert "1 infinite" in caplog.text
    s = batch.wide().iloc[:, 0]
    assert len(s) == 6 * 3600 // 15 + 1
    written = prometheus.data[series_id({"__name__": "aiops_test_gappy", "job": "gappy"})]
    sample_ts = written.ts
    t = (s.index.asi8 // 10**9).astype("int64")
    last_before = np.searchsorted(sample_ts, t, side="right") - 1
    age = t - sample_ts[np.maximum(last_before, 0)]
    # a grid point with no sample within the lookback window is missing (the exact edge, where
    # Prometheus versions differ on open/closed windows, is not checked)
    far = age > LOOKBACK
    near = (age < LOOKBACK) & (last_before >= 0)
    assert far.sum() > 100 and s[far].isna().all()
    expected = written.values[last_before[near]]
    expected = np.where(np.isinf(expected), np.nan, expected)
    np.testing.assert_array_equal(s[near].to_numpy(), expected)
    assert np.isnan(s[ts(end - 2 * 3600)]) and np.isnan(s[ts(end - 3600)])
    assert not np.isnan(s[ts(end - 3600 + 15)])


@pytest.mark.prometheus
def test_bad_promql_raises_bad_query_with_prometheus_message(prometheus):
    src = PrometheusSource(prometheus.url)
    with pytest.raises(BadQuery) as ei:
        src.fetch("sum(rate(foo[5m])", ts(prometheus.end - 600), ts(prometheus.end), STEP, watch="cpu")
    err = ei.value
    assert err.watch == "cpu" and err.query == "sum(rate(foo[5m])"
    assert "parse error" in str(err) and "'cpu'" in str(err)
    assert err.__cause__ is None and err.__suppress_context__  # no client traceback attached


@pytest.mark.prometheus
def test_no_data_and_too_many_series(prometheus):
    src = PrometheusSource(prometheus.url)
    start, end = ts(prometheus.end - 3600), ts(prometheus.end)
    with pytest.raises(NoData) as ei:
        src.fetch('aiops_test_many{idx="nope"}', start, end, STEP, watch="w")
    assert ei.value.watch == "w" and 'idx="nope"' in str(ei.value)
    with pytest.raises(TooManySeries) as ei:
        src.fetch("aiops_test_many", start, end, STEP, watch="w", max_series=50)
    assert ei.value.count == 200 and ei.value.limit == 50
    assert "200" in str(ei.value) and "50" in str(ei.value) and "max_series" in str(ei.value)


@pytest.mark.prometheus
def test_check_passes_on_a_live_server(prometheus):
    PrometheusSource(prometheus.url).check()


def test_down_server_raises_source_unavailable_after_retries(caplog):
    port = free_port()  # nothing listens here
    src = PrometheusSource(f"http://admin:hunter2@127.0.0.1:{port}", retries=2, backoff=0.01, timeout=2)
    with caplog.at_level(logging.DEBUG, logger="aiops"):
        with pytest.raises(SourceUnavailable) as ei:
            src.fetch("up", ts(0), ts(600), STEP, watch="w")
        with pytest.raises(SourceUnavailable):
            src.check()
    msg = str(ei.value)
    assert f"127.0.0.1:{port}" in msg and "3 times" in msg and ei.value.watch == "w"
    assert "hunter2" not in msg and "hunter2" not in caplog.text
    assert sum("retry" in r.getMessage() for r in caplog.records) == 4  # 2 per call


@pytest.mark.prometheus
def test_basic_auth_right_and_wrong_credentials(prometheus_auth):
    srv = prometheus_auth.server
    cfg = PrometheusConfig(url=srv.url, basic_auth={"username": srv.username, "password": srv.password})
    src = PrometheusSource.from_config(cfg)
    src.check()
    batch = src.fetch("aiops_test_auth", ts(prometheus_auth.end - 3600), ts(prometheus_auth.end), STEP)
    assert batch.frame["value"].notna().all() and len(batch.frame) == 241

    for auth in [(srv.username, "wrong-pw"), None]:
        bad = PrometheusSource(srv.url, basic_auth=auth, retries=0)
        with pytest.raises(AuthError) as ei:
            bad.fetch("aiops_test_auth", ts(prometheus_auth.end - 600), ts(prometheus_auth.end), STEP, watch="a")
        assert "401" in str(ei.value) and "basic_auth" in ei.value.hint and "wrong-pw" not in str(ei.value)
        with pytest.raises(AuthError):
            bad.check()


# -- a loopback double for what a real server cannot show -----------------------------------


class _Double:
    def __init__(self):
        self.requests: list[tuple[str, Message]] = []
        self.fail_first = 0  # answer 503 this many times
        self.delay = 0.0
        self.html = False  # answer like a web page, not an API


@contextlib.contextmanager
def serve_double(certfile: str | None = None):
    """A loopback Prometheus double answering query_range with ``up{job="x"} = 1``."""
    state = _Double()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            state.requests.append((self.path, self.headers))
            if state.delay:
                threading.Event().wait(state.delay)
            if state.fail_first > 0:
                state.fail_first -= 1
                return self._send(503, {"status": "error", "errorType": "timeout", "error": "query timed out"})
            if state.html:
                body = b"<html>login</html>"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                return self.wfile.write(body)
            url = urlsplit(self.path)
            if url.path == "/api/v1/status/buildinfo":
                return self._send(200, {"status": "success", "data": {"version": "2.42.0"}})
            q = {k: v[0] for k, v in parse_qs(url.query).items()}
            start, end, step = float(q["start"]), float(q["end"]), float(q["step"])
            values = [[t, "1"] for t in np.arange(start, end + 1e-9, step).tolist()]
            self._send(200, {"status": "success", "data": {"resultType": "matrix", "result": [
                {"metric": {"__name__": "up", "job": "x"}, "values": values}]}})

        def _send(self, code, doc):
            body = json.dumps(doc).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    class Server(ThreadingHTTPServer):
        def handle_error(self, request, client_address):  # the client hung up on a slow answer
            pass

    server = Server(("127.0.0.1", 0), Handler)
    scheme = "http"
    if certfile:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(certfile)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
        scheme = "https"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.url = f"{scheme}://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def double():
    with serve_double() as state:
        yield state


def test_bearer_token_and_extra_headers_on_every_request(double, caplog):
    cfg = PrometheusConfig(url=double.url, bearer_token="tok-123", headers={"X-Scope-OrgID": "tenant-1"})
    src = PrometheusSource.from_config(cfg)
    with caplog.at_level(logging.DEBUG):
        src.check()
        batch = PrometheusSource.from_config(cfg.model_copy(update={"max_points_per_request": 10})).fetch(
            "up", ts(0), ts(600), STEP
        )
    assert len(batch.frame) == 41 and batch.frame["value"].eq(1).all()
    assert len(double.requests) == 1 + 5  # check + 41 points in chunks of 10
    for _, headers in double.requests:
        assert headers["Authorization"] == "Bearer tok-123"
        assert headers["X-Scope-OrgID"] == "tenant-1"  # header names are case-insensitive
    assert "tok-123" not in caplog.text and "tok-123" not in repr(src)


def test_503_is_retried_then_succeeds(double):
    double.fail_first = 2
    src = PrometheusSource(double.url, retries=2, backoff=0.01)
    batch = src.fetch("up", ts(0), ts(60), STEP)
    assert len(batch.frame) == 5 and len(double.requests) == 3


def test_timeout_is_retried_then_source_unavailable(double):
    double.delay = 0.5
    src = PrometheusSource(double.url, retries=1, backoff=0.01, timeout=0.1)
    with pytest.raises(SourceUnavailable) as ei:
        src.fetch("up", ts(0), ts(60), STEP, watch="slow")
    assert "timed out" in str(ei.value) and len(double.requests) == 2


def test_tls_verification_with_ca_file(tmp_path):
    if not shutil.which("openssl"):
        pytest.skip("openssl not found; apt-get install -y openssl")
    pem = tmp_path / "server.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(pem), "-out", str(tmp_path / "cert.pem")],
        check=True, capture_output=True,
    )
    cert = (tmp_path / "cert.pem").read_text()
    pem.write_text(pem.read_text() + cert)  # key + certificate for the server
    with serve_double(str(pem)) as d:
        untrusted = PrometheusSource(d.url, retries=0)
        with pytest.raises(SourceUnavailable) as ei:
            untrusted.fetch("up", ts(0), ts(60), STEP)
        assert "TLS" in str(ei.value)
        cfg = PrometheusConfig(url=d.url, ca_file=str(tmp_path / "cert.pem"))
        assert len(PrometheusSource.from_config(cfg).fetch("up", ts(0), ts(60), STEP).frame) == 5
        with pytest.warns(Warning):  # urllib3 warns about unverified HTTPS
            insecure = PrometheusSource(d.url, verify_tls=False)
            assert len(insecure.fetch("up", ts(0), ts(60), STEP).frame) == 5


def test_off_grid_samples_are_aligned_to_the_nearest_step(double):
    # the client rounds start/end to whole seconds, so a 1.5 s step starting at 1.5 s is
    # evaluated at 2, 3.5, 5: each goes to its nearest grid point, the last point has none
    batch = PrometheusSource(double.url).fetch("up", ts(1), ts(6), pd.Timedelta("1.5s"))
    frame = batch.frame
    assert list(frame["ts"]) == list(pd.to_datetime([1.5, 3, 4.5, 6], unit="s", utc=True))
    assert frame["value"].iloc[:3].eq(1).all() and np.isnan(frame["value"].iloc[3])
    assert list(batch.labels) == ['up{job="x"}']


@pytest.mark.prometheus
def test_series_seen_in_only_one_chunk_still_span_the_whole_range(prometheus):
    start, end = prometheus.end - 2 * 86400, prometheus.end
    src = PrometheusSource(prometheus.url, max_points_per_request=5000)
    batch = src.fetch('aiops_test_long{instance="a"} or aiops_test_many{idx="007"}', ts(start), ts(end), STEP)
    wide = batch.wide()
    assert wide.shape == (2 * 86400 // 15 + 1, 2)
    many = wide[series_id({"__name__": "aiops_test_many", "job": "many", "idx": "007"})]
    assert many.notna().sum() == 241 and many[ts(end - 3600):].notna().all()
    assert many[: ts(end - 3600 - 15)].isna().all()


@pytest.mark.prometheus
def test_aiops_fetch_command_reads_a_password_protected_prometheus(prometheus_auth, tmp_path):
    from click.testing import CliRunner

    from aiops.cli import cli

    srv = prometheus_auth.server
    (tmp_path / "pw").write_text(srv.password + "\n")
    (tmp_path / "aiops.yaml").write_text(
        f"""
source: {{kind: prometheus}}
prometheus:
  url: {srv.url}
  basic_auth: {{username: {srv.username}, password_file: {tmp_path / "pw"}}}
  retries: 0
watches:
  - {{name: auth, query: 'aiops_test_auth{{job="auth"}}', step: 1m, history: 1h}}
  - {{name: broken, query: 'rate(aiops_test_auth[5m]', step: 1m, history: 1h}}
"""
    )
    runner = CliRunner()
    end = str(prometheus_auth.end)
    res = runner.invoke(cli, ["fetch", "-c", str(tmp_path / "aiops.yaml"), "auth", "--end", end, "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc[0]["labels"] == {"__name__": "aiops_test_auth", "job": "auth"}
    assert doc[0]["points"] == 61 and doc[0]["missing"] == 0

    res = runner.invoke(cli, ["fetch", "-c", str(tmp_path / "aiops.yaml"), "broken", "--end", end])
    assert res.exit_code == 2
    assert "watch 'broken'" in res.output and "parse error" in res.output and "Traceback" not in res.output
    assert srv.password not in res.output


@pytest.mark.parametrize("ci", ["true", ""])
def test_missing_prometheus_fails_in_ci_and_skips_elsewhere(monkeypatch, tmp_path, ci):
    from tests.fixtures.prom import prometheus_binary

    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("CI", ci)
    expected = pytest.fail.Exception if ci else pytest.skip.Exception
    with pytest.raises(expected, match="apt-get install -y prometheus"):
        prometheus_binary("promtool")


def test_an_answer_that_is_not_prometheus_is_a_clear_source_error(double):
    from aiops.errors import SourceError

    double.html = True
    src = PrometheusSource(double.url)
    with pytest.raises(SourceError) as ei:
        src.fetch("up", ts(0), ts(60), STEP, watch="w")
    assert "not a Prometheus API response" in str(ei.value) and ei.value.watch == "w"
