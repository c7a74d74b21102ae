"""A Prometheus-compatible read API over aiops's output series (mounted at ``/prometheus``).

Enough of Prometheus's HTTP API for a stock Grafana Prometheus datasource (queries, label and
series lookups, metadata, build info; GET and form POST) and for prometheus-api-client.

PromQL served (anything else is a ``bad_data`` error saying so):
    vector selectors with ``=``, ``!=``, ``=~``, ``!~``; number literals; ``+ - * / % ^``
    between scalars, or between a vector and a scalar; parentheses;
    ``sum|avg|min|max|count [by|without (labels)] (expr)``; ``topk|bottomk(k, expr)``.

Query times may be in the future (forecast horizons). Values at each evaluation time are the
newest point within ``lookback_delta`` (default 5m), as in Prometheus.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pandas as pd
from flask import Blueprint, Response, current_app, jsonify, request

from aiops import __version__
from aiops.errors import AiopsError, BadQuery, InputError, StoreError
from aiops.outputs import DEFAULT_LOOKBACK, METRICS, eval_times, label_names, label_values, sample_at, select_series
from aiops.promql import parse_selector
from aiops.store import Store
from aiops.timeutil import parse_duration, parse_time

logger = logging.getLogger(__name__)

MAX_POINTS = 11000
SUPPORTED = (
    "supported: vector selectors (=, !=, =~, !~), numbers, + - * / % ^ between scalars or a vector "
    "and a scalar, sum/avg/min/max/count [by|without (labels)] (...), topk/bottomk(k, ...)"
)
AGGREGATIONS = ("sum", "avg", "min", "max", "count")
_UNSUPPORTED_HINTS = {"[": "range vectors ([5m])", "offset": "offset", "@": "@ modifiers"}


class QueryError(AiopsError):
    """A request the API refuses: ``error_type`` and ``status`` as Prometheus would send."""

    def __init__(self, message: str, *, error_type: str = "bad_data", status: int = 400):
        super().__init__(message)
        self.error_type = error_type
        self.status = status


# --------------------------------------------------------------------------- parsing

_TOKEN_RE = re.compile(
    r"""\s*(?:
      (?P<num>(?:0[xX][0-9a-fA-F]+)|(?:\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)|(?:[Ii]nf|NaN)\b)
    | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
    | (?P<punct>[(){},+\-*/%^\[@])
    )""",
    re.X,
)


@dataclass
class Node:
    kind: str  # num | sel | binop | neg | agg | topk
    value: Any = None
    args: list["Node"] = field(default_factory=list)
    grouping: tuple[str, tuple[str, ...]] | None = None  # ("by"|"without", labels)


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.pos = 0

    def fail(self, what: str) -> QueryError:
        return QueryError(f"1:{self.pos + 1}: parse error: {what} in {self.text!r}; {SUPPORTED}")

    def peek(self) -> tuple[str, str] | None:
        m = _TOKEN_RE.match(self.text, self.pos)
        if not m or m.end() == m.start() or m.lastgroup is None:
            rest = self.text[self.pos :].strip()
            if rest:
                raise self.fail(f"unexpected {rest[:20]!r}")
            return None
        return m.lastgroup, m.group(m.lastgroup)

    def take(self) -> tuple[str, str]:
        tok = self.peek()
        if tok is None:
            raise self.fail("unexpected end of input")
        self.pos = _TOKEN_RE.match(self.text, self.pos).end()
        return tok

    def expect(self, punct: str) -> None:
        tok = self.peek()
        if tok != ("punct", punct):
            raise self.fail(f"expected {punct!r}, got {tok[1] if tok else 'end of input'!r}")
        self.take()

    def parse(self) -> Node:
        if not self.text.strip():
            raise QueryError('invalid parameter "query": query is empty')
        node = self.addsub()
        if self.peek() is not None:
            raise self.fail(f"unexpected {self.peek()[1]!r}")
        return node

    def binary(self, ops: str, sub: Callable[[], Node]) -> Node:
        left = sub()
        while (tok := self.peek()) and tok[0] == "punct" and tok[1] in ops:
            self.take()
            left = Node("binop", tok[1], [left, sub()])
        return left

    def addsub(self) -> Node:
        return self.binary("+-", self.muldiv)

    def muldiv(self) -> Node:
        return self.binary("*/%", self.unary)

    def unary(self) -> Node:
        tok = self.peek()
        if tok in (("punct", "-"), ("punct", "+")):
            self.take()
            inner = self.unary()
            return Node("neg", None, [inner]) if tok[1] == "-" else inner
        return self.power()

    def power(self) -> Node:
        base = self.primary()
        if self.peek() == ("punct", "^"):
            self.take()
            return Node("binop", "^", [base, self.unary()])  # right-associative, binds tighter than unary -
        return base

    def primary(self) -> Node:
        tok = self.peek()
        if tok is None:
            raise self.fail("unexpected end of input")
        kind, text = tok
        if kind == "num":
            self.take()
            return Node("num", float(int(text, 16)) if text.lower().startswith("0x") else float(text))
        if tok == ("punct", "("):
            self.take()
            node = self.addsub()
            self.expect(")")
            return node
        if kind == "punct" and text == "{":
            return self.selector(self.pos)
        if kind == "ident":
            start = self.pos
            self.take()
            nxt = self.peek()
            low = text.lower()
            if low in AGGREGATIONS or low in ("topk", "bottomk"):
                return self.aggregation(low)
            if nxt == ("punct", "("):
                raise self.fail(f"function {text}() is not supported")
            if text in ("by", "without", "offset", "and", "or", "unless", "bool", "on", "ignoring"):
                raise self.fail(f"{text!r} is not supported here")
            return self.selector(start)
        raise self.fail(f"unexpected {text!r}")

    def grouping(self) -> tuple[str, tuple[str, ...]] | None:
        tok = self.peek()
        if tok and tok[0] == "ident" and tok[1] in ("by", "without"):
            self.take()
            self.expect("(")
            labels: list[str] = []
            while self.peek() != ("punct", ")"):
                k, name = self.take()
                if k != "ident":
                    raise self.fail(f"expected a label name, got {name!r}")
                labels.append(name)
                if self.peek() == ("punct", ","):
                    self.take()
            self.expect(")")
            return tok[1], tuple(labels)
        return None

    def aggregation(self, op: str) -> Node:
        grouping = self.grouping()
        self.expect("(")
        args = []
        if op in ("topk", "bottomk"):
            k = self.addsub()
            self.expect(",")
            args.append(k)
        args.append(self.addsub())
        self.expect(")")
        after = self.grouping()
        if grouping and after:
            raise self.fail("grouping given twice")
        return Node("topk" if op in ("topk", "bottomk") else "agg", op, args, grouping or after)

    def selector(self, start: int) -> Node:
        """Hand the raw selector text (name and/or {...}) to aiops.promql.parse_selector."""
        i = self.pos
        while i < len(self.text) and self.text[i].isspace():
            i += 1
        end = self.pos
        if i < len(self.text) and self.text[i] == "{":
            quote, j = None, i + 1
            while j < len(self.text):
                ch = self.text[j]
                if quote:
                    if ch == "\\":
                        j += 1
                    elif ch == quote:
                        quote = None
                elif ch in "\"'`":
                    quote = ch
                elif ch == "}":
                    break
                j += 1
            if j >= len(self.text):
                raise self.fail("unclosed '{'")
            end = j + 1
        text = self.text[start:end]
        self.pos = end
        rest = self.text[end:].lstrip()
        for mark, what in _UNSUPPORTED_HINTS.items():
            if rest.startswith(mark):
                raise self.fail(f"{what} are not supported")
        try:
            return Node("sel", parse_selector(text))
        except BadQuery as exc:
            raise QueryError(f"parse error: {exc.message}; {SUPPORTED}") from None


def parse_query(text: str) -> Node:
    """Parse the PromQL subset above.

    Raises:
        QueryError: bad or unsupported syntax (``bad_data``).
    """
    return _Parser(text).parse()


# --------------------------------------------------------------------------- evaluation


@dataclass
class Vector:
    """Series over the evaluation times; NaN = no sample at that step."""

    labels: list[dict[str, str]]
    values: np.ndarray  # shape (series, steps)


_OPS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "+": np.add,
    "-": np.subtract,
    "*": np.multiply,
    "/": np.divide,
    "%": np.fmod,
    "^": np.power,
}


def evaluate(node: Node, store: Store, times_ms: np.ndarray, lookback_ms: int) -> float | Vector:
    """Evaluate a parsed query at each of ``times_ms``: a float (scalar) or a :class:`Vector`."""
    with np.errstate(all="ignore"):
        return _eval(node, store, times_ms, lookback_ms)


def _eval(node: Node, store: Store, times: np.ndarray, lb: int) -> float | Vector:
    if node.kind == "num":
        return float(node.value)
    if node.kind == "neg":
        inner = _eval(node.args[0], store, times, lb)
        if isinstance(inner, float):
            return -inner
        return Vector([_drop_name(x) for x in inner.labels], -inner.values)
    if node.kind == "sel":
        got = sample_at(store, select_series(store, node.value), times, lb)
        values = np.vstack([v for _, v in got]) if got else np.empty((0, len(times)))
        return Vector([s.labels for s, _ in got], values)
    if node.kind == "binop":
        a, b = (_eval(x, store, times, lb) for x in node.args)
        op = _OPS[node.value]
        if isinstance(a, float) and isinstance(b, float):
            return float(op(np.float64(a), np.float64(b)))
        if isinstance(a, Vector) and isinstance(b, Vector):
            raise QueryError(f"binary {node.value!r} between two vectors is not supported; {SUPPORTED}")
        vec = a if isinstance(a, Vector) else b
        vals = op(a.values, b) if isinstance(a, Vector) else op(a, b.values)
        return _unique(Vector([_drop_name(x) for x in vec.labels], vals))
    if node.kind == "agg":
        return _aggregate(node, _vector(node, _eval(node.args[0], store, times, lb)))
    if node.kind == "topk":
        k = _eval(node.args[0], store, times, lb)
        if not isinstance(k, float) or not math.isfinite(k):
            raise QueryError(f"{node.value}: k must be a number")
        return _topk(node, int(k), _vector(node, _eval(node.args[1], store, times, lb)))
    raise QueryError(f"cannot evaluate {node.kind}")  # pragma: no cover - parser makes no others


def _vector(node: Node, v: float | Vector) -> Vector:
    if not isinstance(v, Vector):
        raise QueryError(f"{node.value}: expected an instant vector argument, got a scalar")
    return v


def _drop_name(labels: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in labels.items() if k != "__name__"}


def _unique(v: Vector) -> Vector:
    keys = [tuple(sorted(x.items())) for x in v.labels]
    if len(set(keys)) != len(keys):
        raise QueryError("vector cannot contain metrics with the same labelset", error_type="execution", status=422)
    return v


def _group_key(labels: dict[str, str], grouping) -> dict[str, str]:
    if grouping is None:
        return {}
    how, names = grouping
    if how == "by":
        return {k: labels[k] for k in names if k in labels}
    return {k: v for k, v in labels.items() if k not in names and k != "__name__"}


def _groups(v: Vector, grouping) -> dict[tuple, tuple[dict[str, str], list[int]]]:
    groups: dict[tuple, tuple[dict[str, str], list[int]]] = {}
    for i, lbl in enumerate(v.labels):
        key = _group_key(lbl, grouping)
        groups.setdefault(tuple(sorted(key.items())), (key, []))[1].append(i)
    return groups


def _aggregate(node: Node, v: Vector) -> Vector:
    labels, rows = [], []
    for key, idx in _groups(v, node.grouping).values():
        block = v.values[idx]
        present = ~np.isnan(block)
        n = present.sum(axis=0)
        if node.value == "count":
            row = n.astype(float)
        elif node.value == "sum":
            row = np.nansum(block, axis=0)
        elif node.value == "avg":
            row = np.nansum(block, axis=0) / np.maximum(n, 1)
        elif node.value == "min":
            row = np.nanmin(np.where(present, block, np.inf), axis=0)
        else:
            row = np.nanmax(np.where(present, block, -np.inf), axis=0)
        labels.append(key)
        rows.append(np.where(n > 0, row, np.nan))
    return Vector(labels, np.vstack(rows) if rows else np.empty((0, v.values.shape[1])))


def _topk(node: Node, k: int, v: Vector) -> Vector:
    out = np.full_like(v.values, np.nan)
    if k > 0:
        for _, idx in _groups(v, node.grouping).values():
            block = v.values[idx]
            missing = np.isnan(block)
            key = np.where(missing, np.inf, -block if node.value == "topk" else block)
            ranks = np.argsort(np.argsort(key, axis=0, kind="stable"), axis=0, kind="stable")
            out[idx] = np.where((ranks < k) & ~missing, block, np.nan)
    return Vector(v.labels, out)


# --------------------------------------------------------------------------- formatting


def format_value(v: float) -> str:
    """Prometheus's sample text (Go's FormatFloat 'f', -1): ``1``, ``0.25``, ``+Inf``, ``NaN``."""
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return np.format_float_positional(v, trim="-")


def format_time(ms: int) -> int | float:
    return ms // 1000 if ms % 1000 == 0 else ms / 1000


# --------------------------------------------------------------------------- request parsing


def _param(name: str, default: str | None = None) -> str | None:
    v = request.values.get(name)
    return default if v in (None, "") else v


def _default_or_missing(name: str, default):
    if default is None:
        raise QueryError(f'invalid parameter "{name}": missing')
    return default


def _time_param(name: str, default: pd.Timestamp | None = None) -> pd.Timestamp:
    raw = _param(name)
    if raw is None:
        return _default_or_missing(name, default)
    try:
        return parse_time(float(raw)) if re.fullmatch(r"[+-]?\d+(\.\d+)?([eE][+-]?\d+)?", raw) else parse_time(raw)
    except (InputError, ValueError, OverflowError):
        raise QueryError(f'invalid parameter "{name}": cannot parse "{raw}" to a valid timestamp') from None


def _duration_param(name: str, default: pd.Timedelta | None = None) -> pd.Timedelta:
    raw = _param(name)
    if raw is None:
        return _default_or_missing(name, default)
    try:
        return parse_duration(raw)
    except ValueError:
        if re.fullmatch(r"\s*-?\d+(\.\d+)?\s*", raw) and float(raw) <= 0 and name == "step":
            raise QueryError(
                "zero or negative query resolution step widths are not accepted. Try a positive integer"
            ) from None
        raise QueryError(f'invalid parameter "{name}": cannot parse "{raw}" to a valid duration') from None


def _matches() -> list[str]:
    return request.values.getlist("match[]")


def _limit(items: list) -> tuple[list, list[str]]:
    raw = _param("limit")
    if raw is None:
        return items, []
    try:
        n = int(raw)
    except ValueError:
        raise QueryError(f'invalid parameter "limit": cannot parse "{raw}" to an integer') from None
    if 0 < n < len(items):
        return items[:n], ["results truncated due to limit"]
    return items, []


def _success(data: Any, warnings: list[str] | None = None) -> Response:
    body: dict[str, Any] = {"status": "success", "data": data}
    if warnings:
        body["warnings"] = warnings
    return jsonify(body)


def _store() -> Store:
    return current_app.extensions["aiops"]["store"]


def _lookback() -> int:
    default = current_app.extensions["aiops"].get("lookback", DEFAULT_LOOKBACK)
    return int(_duration_param("lookback_delta", default).total_seconds() * 1000)


def _selectors(raw: list[str]):
    try:
        return [parse_selector(m) for m in raw]
    except BadQuery as exc:
        raise QueryError(f'invalid parameter "match[]": {exc.message}') from None


# --------------------------------------------------------------------------- blueprint


def create_blueprint() -> Blueprint:
    """The read API; expects ``current_app.extensions["aiops"]["store"]`` (see create_app)."""
    bp = Blueprint("promapi", __name__)

    @bp.errorhandler(QueryError)
    def _query_error(exc: QueryError):
        return jsonify({"status": "error", "errorType": exc.error_type, "error": exc.message}), exc.status

    @bp.errorhandler(StoreError)
    def _store_error(exc: StoreError):
        logger.warning("read API: %s", exc)
        return jsonify({"status": "error", "errorType": "unavailable", "error": exc.message}), 503

    @bp.route("/", methods=["GET"])
    def index():
        return Response("aiops Prometheus-compatible read API; see /api/v1/query\n", mimetype="text/plain")

    @bp.route("/api/v1/query", methods=["GET", "POST"])
    def query():
        node = parse_query(_param("query", "") or "")
        t = _time_param("time", pd.Timestamp.now(tz="UTC"))
        ms = int(pd.DatetimeIndex([t]).as_unit("ms").asi8[0])
        res = evaluate(node, _store(), np.array([ms], dtype=np.int64), _lookback())
        if isinstance(res, float):
            return _success({"resultType": "scalar", "result": [format_time(ms), format_value(res)]})
        result = [
            {"metric": lbl, "value": [format_time(ms), format_value(float(row[0]))]}
            for lbl, row in zip(res.labels, res.values)
            if not np.isnan(row[0])
        ]
        return _success({"resultType": "vector", "result": result})

    @bp.route("/api/v1/query_range", methods=["GET", "POST"])
    def query_range():
        node = parse_query(_param("query", "") or "")
        start, end = _time_param("start"), _time_param("end")
        step = _duration_param("step")
        if end < start:
            raise QueryError("end timestamp must not be before start time")
        if (end - start) / step > MAX_POINTS:
            raise QueryError(
                "exceeded maximum resolution of 11,000 points per timeseries. "
                "Try decreasing the query resolution (?step=XX)"
            )
        times = eval_times(start, end, step)
        res = evaluate(node, _store(), times, _lookback())
        if isinstance(res, float):
            res = Vector([{}], np.full((1, len(times)), res))
        result = []
        for lbl, row in zip(res.labels, res.values):
            keep = np.flatnonzero(~np.isnan(row))
            if len(keep):
                result.append(
                    {"metric": lbl, "values": [[format_time(int(times[i])), format_value(float(row[i]))] for i in keep]}
                )
        return _success({"resultType": "matrix", "result": result})

    @bp.route("/api/v1/labels", methods=["GET", "POST"])
    def labels():
        names, warn = _limit(label_names(_store(), _selectors(_matches()) or None))
        return _success(names, warn)

    @bp.route("/api/v1/label/<name>/values", methods=["GET"])
    def values(name: str):
        vals, warn = _limit(label_values(_store(), name, _selectors(_matches()) or None))
        return _success(vals, warn)

    @bp.route("/api/v1/series", methods=["GET", "POST"])
    def series():
        raw = _matches()
        if not raw:
            raise QueryError("no match[] parameter provided")
        found, warn = _limit([s.labels for s in select_series(_store(), _selectors(raw))])
        return _success(found, warn)

    @bp.route("/api/v1/metadata", methods=["GET"])
    def metadata():
        metric = _param("metric")
        data = {
            name: [{"type": "gauge", "help": help_, "unit": "seconds" if name.endswith("_seconds") else ""}]
            for name, help_ in METRICS.items()
            if metric in (None, name)
        }
        return _success(data)

    @bp.route("/api/v1/status/buildinfo", methods=["GET"])
    def buildinfo():
        return _success(
            {
                "version": __version__,
                "revision": "",
                "branch": "",
                "buildUser": "aiops",
                "buildDate": "",
                "goVersion": "",
            }
        )

    @bp.route("/api/v1/query_exemplars", methods=["GET", "POST"])
    def exemplars():
        return _success([])

    @bp.route("/api/v1/rules", methods=["GET"])
    def rules():
        return _success({"groups": []})

    return bp
