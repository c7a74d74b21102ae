"""Prometheus (and Thanos, Mimir, Cortex, VictoriaMetrics) as a metric source.

Range queries go through prometheus-api-client's ``custom_query_range`` on a
``requests.Session`` we configure (auth, headers, TLS); long ranges are split so no request
asks for more than ``max_points_per_request`` points per series, and the pieces are stitched
onto one step grid. Errors from the client and from ``requests`` are turned into the
:class:`aiops.errors.SourceError` family here, where they enter.

Values: Prometheus sends sample values as strings. ``"NaN"`` stays NaN (missing).
``"+Inf"``/``"-Inf"`` (e.g. ``histogram_quantile`` landing in the +Inf bucket, or a division
by zero) are also turned into NaN, because no model can fit an infinite value; a warning
says how many were dropped.
"""

from __future__ import annotations

import ast
import json
import logging
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, TypeVar
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pandas as pd
import requests
from prometheus_api_client import PrometheusApiClientException, PrometheusConnect
from urllib3.util.retry import Retry

from aiops.errors import AuthError, BadQuery, InputError, NoData, SourceError, SourceUnavailable, TooManySeries
from aiops.promql import parse_selector
from aiops.sources.base import align_to_grid, grid
from aiops.types import SeriesBatch, series_id

if TYPE_CHECKING:
    from aiops.config import PrometheusConfig

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Prometheus answers 503 for a query timeout or cancellation and 502/504 come from proxies in
# front of it: worth retrying like a connection error. Other statuses are final.
_RETRY_STATUS = {502, 503, 504}
_TRANSIENT = (requests.exceptions.ConnectionError, requests.exceptions.Timeout, requests.exceptions.ChunkedEncodingError)
_CLIENT_ERR_RE = re.compile(r"^HTTP Status Code (\d+) \((.*)\)$", re.S)


class _HTTPStatus(Exception):
    """A non-2xx answer, with Prometheus's own error type and message when it sent JSON."""

    def __init__(self, status: int, error_type: str | None, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status, self.error_type, self.message = status, error_type, message


def redact_url(url: str) -> str:
    """The URL without user:password, safe for logs and error messages."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def _parse_error_body(status: int, body: bytes | str) -> _HTTPStatus:
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)
    try:
        doc = json.loads(text)
        return _HTTPStatus(status, doc.get("errorType"), str(doc.get("error") or text).strip())
    except (ValueError, AttributeError):
        return _HTTPStatus(status, None, text.strip()[:500] or f"HTTP {status}")


def _from_client_error(exc: PrometheusApiClientException) -> _HTTPStatus:
    # prometheus-api-client keeps only "HTTP Status Code <n> (<repr of the body bytes>)".
    m = _CLIENT_ERR_RE.match(str(exc))
    if not m:
        return _HTTPStatus(0, None, str(exc))
    try:
        body = ast.literal_eval(m.group(2))
    except (ValueError, SyntaxError):
        body = m.group(2)
    return _parse_error_body(int(m.group(1)), body)


class PrometheusSource:
    """Range queries against a Prometheus-compatible HTTP API.

    Args:
        url: base URL of the API (``http://prometheus:9090``, or a Mimir ``.../prometheus``).
        bearer_token: sent as ``Authorization: Bearer``.
        basic_auth: ``(username, password)``.
        headers: extra headers on every request (``X-Scope-OrgID`` for a Mimir tenant).
        timeout: per-request timeout in seconds.
        verify_tls: verify the server certificate; ``ca_file`` names the CA bundle.
        max_points_per_request: most points per series in one request (Prometheus: 11,000).
        retries: retries on timeouts, connection errors and 502/503/504.
        backoff: first retry delay in seconds; doubles each retry.
        max_series_per_query: with ``fetch(split_by=...)``, most series one query may return.
        max_concurrency: most requests in flight to this server at once, across threads.
    """

    name = "prometheus"
    SPLITS_QUERIES = True  # fetch() takes split_by

    def __init__(
        self,
        url: str,
        *,
        bearer_token: str | None = None,
        basic_auth: tuple[str, str] | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 30.0,
        verify_tls: bool = True,
        ca_file: str | None = None,
        max_points_per_request: int = 11000,
        retries: int = 3,
        backoff: float = 0.5,
        max_series_per_query: int = 1000,
        max_concurrency: int = 4,
    ):
        if not re.match(r"^https?://[^/\s]+", url or ""):
            raise InputError(f"Prometheus url must be http(s)://host[:port], got {redact_url(str(url))!r}")
        if bearer_token and basic_auth:
            raise InputError("set bearer_token or basic_auth, not both")
        if max_points_per_request < 2:
            raise InputError(f"max_points_per_request must be at least 2, got {max_points_per_request}")
        if max_series_per_query < 1 or max_concurrency < 1:
            raise InputError(
                f"max_series_per_query and max_concurrency must be at least 1, got {max_series_per_query} "
                f"and {max_concurrency}"
            )
        self.url = url.rstrip("/")
        self.safe_url = redact_url(self.url)
        self.timeout = float(timeout)
        self.max_points_per_request = int(max_points_per_request)
        self.retries = max(0, int(retries))
        self.backoff = max(0.0, float(backoff))
        self.max_series_per_query = int(max_series_per_query)
        self.max_concurrency = int(max_concurrency)
        self._slots = threading.BoundedSemaphore(self.max_concurrency)  # per server, across threads
        self._headers = {k: str(v) for k, v in (headers or {}).items()}
        if bearer_token:
            self._headers["Authorization"] = f"Bearer {bearer_token}"
        self._auth = tuple(basic_auth) if basic_auth else None
        self._verify: bool | str = ca_file if (verify_tls and ca_file) else bool(verify_tls)
        self._session = requests.Session()  # no connection is opened until the first request
        self._session.verify = self._verify
        self._client: PrometheusConnect | None = None

    @classmethod
    def from_config(cls, cfg: "PrometheusConfig") -> "PrometheusSource":
        """Build a source from the ``prometheus:`` section of the config."""
        basic = None
        if cfg.basic_auth is not None:
            pw = cfg.basic_auth.password.get_secret_value() if cfg.basic_auth.password else ""
            basic = (cfg.basic_auth.username, pw)
        return cls(
            cfg.url,
            bearer_token=cfg.bearer_token.get_secret_value() if cfg.bearer_token else None,
            basic_auth=basic,
            headers=dict(cfg.headers),
            timeout=cfg.timeout.seconds,
            verify_tls=cfg.verify_tls,
            ca_file=cfg.ca_file,
            max_points_per_request=cfg.max_points_per_request,
            retries=cfg.retries,
            backoff=cfg.backoff.seconds,
            max_series_per_query=cfg.max_series_per_query,
            max_concurrency=cfg.max_concurrency,
        )

    def __repr__(self) -> str:  # never shows credentials
        return f"PrometheusSource({self.safe_url!r})"

    # -- public API ---------------------------------------------------------------------

    def fetch(
        self,
        query: str,
        start: pd.Timestamp,
        end: pd.Timestamp,
        step: pd.Timedelta,
        *,
        watch: str | None = None,
        max_series: int | None = None,
        split_by: str | None = None,
    ) -> SeriesBatch:
        """Run a range query and return every series on the step grid from start to end.

        With ``split_by`` (a label name) the query is split so that no request returns more
        than ``max_series_per_query`` series: ``count by (<label>) (<query>)`` over the same
        range sizes each label value, values are packed into groups under the cap, and each
        group is one query (a matcher added to a plain selector, ``and on(<label>)`` around
        any other expression), at most ``max_concurrency`` in flight.

        Raises:
            InputError: empty query, step under one second, or end before start.
            NoData: the query matched no series in the range.
            TooManySeries: more than ``max_series`` series.
            BadQuery: Prometheus rejected the query (its message is kept).
            AuthError: 401/403.
            SourceUnavailable: unreachable after ``retries`` retries.
        """
        if not query or not str(query).strip():
            raise InputError("empty query", hint="set watches[].query to a PromQL expression")
        step = pd.Timedelta(step)
        if step < pd.Timedelta(seconds=1):
            raise InputError(f"step must be at least 1s for Prometheus, got {step}")
        index = grid(pd.Timestamp(start), pd.Timestamp(end), step)
        if len(index) == 0:
            raise InputError(f"no step-aligned point between start {start} and end {end} (step {step})")
        if max_series is not None and max_series < 1:
            raise InputError(f"max_series must be at least 1, got {max_series}")
        if split_by is not None:
            if not _LABEL_RE.fullmatch(split_by):
                raise InputError(f"split_by must be a label name like instance, got {split_by!r}")
            return self._fetch_split(str(query), index, step, watch, max_series, split_by)
        return self._fetch(str(query), index, step, watch, max_series)

    def check(self) -> None:
        """Raise SourceUnavailable (or AuthError) unless the server answers now."""
        self._call(lambda: self._get("/api/v1/status/buildinfo", fallback="/-/ready"), None, None)

    def close(self) -> None:
        """Release pooled connections; the source still works afterwards."""
        self._session.close()

    # -- internals ----------------------------------------------------------------------

    @property
    def client(self) -> PrometheusConnect:
        if self._client is None:
            # Retries are ours (with backoff and a clear error); the client's adapter must not
            # retry on its own, or a down server costs retries x its backoff before we see it.
            self._client = PrometheusConnect(
                url=self.url,
                headers=self._headers,
                auth=self._auth,
                session=self._session,
                timeout=self.timeout,
                retry=Retry(0, read=False),  # requests' own default: no retries, timeouts stay Timeout
            )
        return self._client

    def _get(self, path: str, *, fallback: str | None = None) -> None:
        resp = self._session.get(
            self.url + path, headers=self._headers, auth=self._auth, timeout=self.timeout, verify=self._verify
        )
        if resp.status_code == 404 and fallback:
            return self._get(fallback)
        if not resp.ok:
            raise _parse_error_body(resp.status_code, resp.content)

    def _query_range(self, query: str, start: pd.Timestamp, end: pd.Timestamp, step_s: float) -> list[dict]:
        try:
            with self._slots:
                result = self.client.custom_query_range(
                    query, start.to_pydatetime(), end.to_pydatetime(), f"{step_s:.3f}".rstrip("0").rstrip(".")
                )
        except PrometheusApiClientException as exc:
            raise _from_client_error(exc) from None
        except (ValueError, KeyError, TypeError) as exc:  # 200 but not a Prometheus answer
            raise SourceError(
                f"{self.safe_url} answered query_range with something that is not a Prometheus "
                f"API response ({exc.__class__.__name__})",
                hint="check prometheus.url points at the Prometheus HTTP API root",
            ) from exc
        if not isinstance(result, list):
            raise SourceError(f"{self.safe_url} returned a {type(result).__name__} result, expected a matrix")
        return result

    def _call(self, fn: Callable[[], T], watch: str | None, query: str | None) -> T:
        """Run ``fn`` with retries on transient failures; map failures to SourceError."""
        delay = self.backoff
        for attempt in range(self.retries + 1):
            try:
                return fn()
            except _TRANSIENT as exc:
                last = f"{exc.__class__.__name__}"
                if isinstance(exc, requests.exceptions.Timeout):
                    last = f"timed out after {self.timeout:g}s"
                elif isinstance(exc, requests.exceptions.SSLError):
                    last = "TLS error (certificate not trusted?)"
                elif isinstance(exc, requests.exceptions.ConnectionError):
                    last = "connection failed"
            except SourceError as exc:  # raised below us without knowing the request
                exc.watch, exc.query = exc.watch or watch, exc.query or query
                raise
            except _HTTPStatus as exc:
                if exc.status not in _RETRY_STATUS:
                    raise self._map_status(exc, watch, query) from None
                last = f"HTTP {exc.status}: {exc.message}"
            if attempt < self.retries:
                logger.warning(
                    "Prometheus %s: %s; retry %d/%d in %.2gs", self.safe_url, last, attempt + 1, self.retries, delay
                )
                time.sleep(delay)
                delay *= 2
        raise SourceUnavailable(
            f"Prometheus at {self.safe_url} unavailable: {last} (tried {self.retries + 1} times)",
            watch=watch,
            query=query,
            hint="check prometheus.url, that the server is up and reachable, and prometheus.timeout",
        )

    def _map_status(self, exc: _HTTPStatus, watch: str | None, query: str | None) -> SourceError:
        if exc.status in (401, 403):
            return AuthError(
                f"Prometheus at {self.safe_url} refused our credentials (HTTP {exc.status}): {exc.message}",
                watch=watch,
                query=query,
                hint="set prometheus.bearer_token(_file) or prometheus.basic_auth (username and "
                "password or password_file), and headers such as X-Scope-OrgID if the server needs them",
            )
        if exc.status in (400, 422) or exc.error_type in ("bad_data", "execution"):
            return BadQuery(
                f"Prometheus rejected the query: {exc.message}",
                watch=watch,
                query=query,
                hint="fix the PromQL in watches[].query (try it in the Prometheus UI first)",
            )
        return SourceError(
            f"Prometheus at {self.safe_url} failed the request (HTTP {exc.status}): {exc.message}",
            watch=watch,
            query=query,
        )

    def _fetch(
        self, query: str, index: pd.DatetimeIndex, step: pd.Timedelta, watch: str | None, max_series: int | None
    ) -> SeriesBatch:
        return self._assemble(self._collect(query, index, step, watch, max_series), query, index, step, watch)

    def _fetch_split(
        self, query: str, index: pd.DatetimeIndex, step: pd.Timedelta, watch: str | None, max_series: int | None,
        label: str,
    ) -> SeriesBatch:
        counts = self._collect(f"count by ({label}) ({query})", index, step, watch, None, what=query)
        sizes: dict[str, int] = {}
        for sid, vals in zip(counts.sids, counts.val_parts):
            value = counts.labels[sid].get(label, "")
            finite = vals[np.isfinite(vals)]
            sizes[value] = max(sizes.get(value, 0), int(finite.max()) if len(finite) else 0)
        if not sizes:
            return self._assemble(counts, query, index, step, watch)  # NoData, named for the watch's query
        total = sum(sizes.values())
        if max_series is not None and total > max_series:
            raise _too_many(f"query matches about {total} series", total, max_series, watch, query)
        groups = _pack(sizes, self.max_series_per_query, label, watch, query)
        queries = [_restrict(query, label, g) for g in groups]
        logger.debug("split %s by %s: %d label values in %d queries", query, label, len(sizes), len(queries))
        if len(queries) == 1:
            parts = [self._collect(queries[0], index, step, watch, None, what=query)]
        else:
            with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(queries))) as pool:
                parts = list(pool.map(lambda q: self._collect(q, index, step, watch, None, what=query), queries))
        merged = _Parts()
        for p in parts:
            merged.extend(p)
        if max_series is not None and len(merged.labels) > max_series:
            raise _too_many(f"query matched {len(merged.labels)} series", len(merged.labels), max_series, watch, query)
        return self._assemble(merged, query, index, step, watch)

    def _collect(
        self, query: str, index: pd.DatetimeIndex, step: pd.Timedelta, watch: str | None, max_series: int | None,
        *, what: str | None = None,
    ) -> "_Parts":
        """Every series of ``query`` over ``index``, in requests of at most max_points_per_request.

        ``what`` is the query to name in errors (the watch's own, when this is a split part).
        """
        step_s = step.total_seconds()
        n = self.max_points_per_request
        parts = _Parts()
        labels, sids, ts_parts, val_parts = parts.labels, parts.sids, parts.ts_parts, parts.val_parts
        shown = what or query
        chunks = range(0, len(index), n)
        for i, lo in enumerate(chunks):
            c_start, c_end = index[lo], index[min(lo + n, len(index)) - 1]
            logger.debug("query_range %s chunk %d/%d [%s, %s]", self.safe_url, i + 1, len(chunks), c_start, c_end)
            result = self._call(lambda: self._query_range(query, c_start, c_end, step_s), watch, shown)
            for item in result:
                metric = {str(k): str(v) for k, v in (item.get("metric") or {}).items()}
                sid = series_id(metric)
                labels.setdefault(sid, metric)
                values = item.get("values") or []
                sids.append(sid)
                # Prometheus timestamps have millisecond resolution: keep them as exact integers
                ts_parts.append(
                    np.round(np.fromiter((v[0] for v in values), "float64", len(values)) * 1e3).astype("int64")
                )
                val_parts.append(np.fromiter((float(v[1]) for v in values), "float64", len(values)))
            if max_series is not None and len(labels) > max_series:
                so_far = " so far" if lo + n < len(index) else ""
                raise _too_many(f"query matched {len(labels)} series{so_far}", len(labels), max_series, watch, shown)
        return parts

    def _assemble(
        self, parts: "_Parts", query: str, index: pd.DatetimeIndex, step: pd.Timedelta, watch: str | None
    ) -> SeriesBatch:
        labels, sids, ts_parts = parts.labels, parts.sids, parts.ts_parts
        if not labels:
            raise NoData(
                f"query matched no series between {index[0]} and {index[-1]} on {self.safe_url}",
                watch=watch,
                query=query,
                hint="check the metric name and label matchers, and that the range holds data",
            )
        ts_ms = np.concatenate(ts_parts)
        vals = np.concatenate(parts.val_parts)
        inf = np.isinf(vals)
        if inf.any():
            logger.warning("watch %s: %d infinite sample values treated as missing", watch or "-", int(inf.sum()))
            vals[inf] = np.nan
        labels = dict(sorted(labels.items()))
        frame = _on_grid(list(labels), sids, [len(t) for t in ts_parts], ts_ms, vals, index, step)
        return SeriesBatch(frame=frame, labels=labels, step=step, watch=watch)


_LABEL_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_RE2_SPECIAL = re.compile(r"([\\.+*?()|\[\]{}^$])")


@dataclass
class _Parts:
    """Result items of one or more range queries, in arrival order."""

    labels: dict[str, dict[str, str]] = field(default_factory=dict)
    sids: list[str] = field(default_factory=list)
    ts_parts: list[np.ndarray] = field(default_factory=list)
    val_parts: list[np.ndarray] = field(default_factory=list)

    def extend(self, other: "_Parts") -> None:
        for sid, lbl in other.labels.items():
            self.labels.setdefault(sid, lbl)
        self.sids += other.sids
        self.ts_parts += other.ts_parts
        self.val_parts += other.val_parts


def _too_many(what: str, count: int, limit: int, watch: str | None, query: str) -> TooManySeries:
    return TooManySeries(
        f"{what}, more than the limit of {limit}", count=count, limit=limit, watch=watch, query=query,
        hint="narrow the query with label matchers or aggregation, or raise watches[].max_series",
    )


def _pack(sizes: dict[str, int], cap: int, label: str, watch: str | None, query: str) -> list[list[str]]:
    """Label values in groups of at most ``cap`` series: in value order, each into the last group while it fits."""
    groups: list[list[str]] = []
    room: list[int] = []
    for value in sorted(sizes):
        n = sizes[value]
        if n > cap:
            raise TooManySeries(
                f"{n} series have {label}={value!r}, more than prometheus.max_series_per_query ({cap}), "
                "so splitting by this label cannot keep every query under the cap",
                count=n, limit=cap, watch=watch, query=query,
                hint="split by a finer label (watches[].split_by) or raise prometheus.max_series_per_query",
            )
        if groups and room[-1] >= n:
            groups[-1].append(value)
            room[-1] -= n
        else:
            groups.append([value])
            room.append(cap - n)
    return groups


def _promql_string(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _restrict(query: str, label: str, values: list[str]) -> str:
    """``query`` limited to series whose ``label`` is one of ``values`` ("" = label absent).

    A plain selector gets a regex matcher; any other expression is intersected
    ``and on(label)`` with a literal vector holding one element per value.
    """
    try:
        parse_selector(query)
        plain = True
    except BadQuery:
        plain = False
    if plain:
        regex = "|".join(_RE2_SPECIAL.sub(r"\\\1", v) for v in values)
        matcher = f"{label}=~{_promql_string(regex)}"
        q = query.strip()
        if q.endswith("}"):
            body = q[q.index("{") + 1:-1].strip()
            return f"{q[:-1].rstrip()}{', ' if body and not body.endswith(',') else ''}{matcher}}}"
        return f"{q}{{{matcher}}}"
    literal = " or ".join(
        f"label_replace(vector(1), {_promql_string(label)}, {_promql_string(v)}, \"\", \"\")" if v else "vector(1)"
        for v in values
    )
    return f"({query}) and on({label}) ({literal})"


def _on_grid(
    order: list[str], sids: list[str], lengths: list[int], ts_ms: np.ndarray, vals: np.ndarray,
    index: pd.DatetimeIndex, step: pd.Timedelta,
) -> pd.DataFrame:
    """Long frame with every series in ``order`` on every point of ``index`` (NaN if missing).

    ``sids[i]`` names the ``lengths[i]`` samples of the i-th result item in ``ts_ms``/``vals``.

    Prometheus evaluates a range query exactly at ``start + k * step``, so samples normally
    land on grid points and are placed directly; anything off the grid (a fractional step
    rounded by the client) goes through :func:`align_to_grid`.
    """
    grid_ms = index.asi8 // 1_000_000
    step_ms = int(step.value // 1_000_000)
    off = ts_ms - grid_ms[0]
    pos = off // step_ms
    if len(ts_ms) and not ((off % step_ms == 0).all() and (pos >= 0).all() and (pos < len(index)).all()):
        ts = pd.DatetimeIndex(ts_ms.astype("datetime64[ms]").astype("datetime64[ns]")).tz_localize("UTC")
        per_sample = np.repeat(np.array(sids, dtype=object), lengths)
        frame = align_to_grid(pd.DataFrame({"series_id": per_sample, "ts": ts, "value": vals}), index, step)
        full = pd.MultiIndex.from_product([order, index], names=["series_id", "ts"])
        frame = frame.set_index(["series_id", "ts"]).reindex(full).reset_index()
        return frame[["series_id", "ts", "value"]]
    row = {sid: i for i, sid in enumerate(order)}
    matrix = np.full((len(order), len(index)), np.nan)
    # chunks arrive in time order, so a later sample for the same point wins (there are none
    # in practice: chunks do not overlap)
    matrix[np.repeat(np.array([row[s] for s in sids], dtype="int64"), lengths), pos] = vals
    return pd.DataFrame(
        {
            "series_id": np.repeat(np.array(order, dtype=object), len(index)),
            "ts": pd.DatetimeIndex(np.tile(index.asi8, len(order)).view("datetime64[ns]")).tz_localize("UTC"),
            "value": matrix.ravel(),
        }
    )
