"""Durations (``5m``, ``1h30m``, ``7d``) and timestamps (ISO 8601 or unix seconds)."""

from __future__ import annotations

import re
from datetime import datetime, timezone

import numpy as np
import pandas as pd

from aiops.errors import InputError

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}
_DUR_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)")


def parse_duration(text: str | int | float, *, allow_zero: bool = False) -> pd.Timedelta:
    """Parse a Prometheus-style duration (``30s``, ``5m``, ``1h30m``, ``7d``, ``2w``).

    A bare number is seconds. Raises ValueError with the accepted forms on anything else.
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if text < 0 or (text == 0 and not allow_zero):
            raise ValueError(f"duration must be positive, got {text}")
        return pd.Timedelta(seconds=float(text))
    s = str(text).strip()
    if re.fullmatch(r"\d+(\.\d+)?", s):
        return parse_duration(float(s), allow_zero=allow_zero)
    pos, total = 0, 0.0
    for m in _DUR_RE.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(s) or pos == 0:
        raise ValueError(
            f"invalid duration {text!r}: use a number and a unit (ms, s, m, h, d, w, y), "
            "e.g. '30s', '5m', '1h30m', '7d'"
        )
    if total <= 0 and not allow_zero:
        raise ValueError(f"duration must be positive, got {text!r}")
    return pd.Timedelta(seconds=total)


def format_duration(td: pd.Timedelta) -> str:
    """Shortest Prometheus-style text for a duration (``1h30m``)."""
    secs = int(round(td.total_seconds()))
    if secs == 0:
        return "0s"
    out = []
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if secs >= size:
            out.append(f"{secs // size}{unit}")
            secs %= size
    return "".join(out)


def parse_timestamps(values: pd.Series, *, column: str = "timestamp") -> tuple[pd.Series, str]:
    """Parse a column of ISO 8601 (zoned or naive = UTC) or unix-second timestamps.

    Returns the UTC timestamps and the input's form (``"unix"``, ``"iso"`` or ``"iso_naive"``)
    so output can be written back in the same form with :func:`format_timestamps`.

    Raises:
        InputError: naming the first row that cannot be parsed.
    """
    if len(values) == 0:
        return pd.Series([], dtype="datetime64[ns, UTC]"), "iso"
    numeric = pd.to_numeric(values, errors="coerce")
    if numeric.notna().all():
        return pd.to_datetime(numeric.astype("float64"), unit="s", utc=True), "unix"
    text = values.astype(str).str.strip()
    try:
        parsed = pd.to_datetime(text, utc=True, format="ISO8601")
    except (ValueError, TypeError):
        parsed = pd.to_datetime(text, utc=True, errors="coerce", format="mixed")
    bad = parsed.isna()
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise InputError(
            f"cannot parse {column} {text.iloc[i]!r} on data row {i + 1}",
            hint="use ISO 8601 (2014-02-14 14:27:00, optionally with a zone) or unix seconds",
        )
    zoned = text.str.contains(r"(?:Z|[+-]\d\d:?\d\d)$", regex=True)
    return parsed, ("iso" if zoned.all() else "iso_naive")


def format_timestamps(ts: pd.Series | pd.DatetimeIndex, form: str) -> pd.Series:
    """Write UTC timestamps in the form :func:`parse_timestamps` reported."""
    ts = pd.Series(pd.DatetimeIndex(ts).tz_convert("UTC"))
    if form == "unix":
        secs = ts.astype("int64") / 1e9
        if (secs == secs.round()).all():
            return secs.round().astype("int64")
        return secs
    if form == "iso_naive":
        return ts.dt.strftime("%Y-%m-%d %H:%M:%S")
    return ts.dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | float | int | datetime) -> pd.Timestamp:
    """One timestamp: ISO 8601 (naive = UTC), unix seconds, or ``now``/``now-1h``."""
    if isinstance(text, datetime):
        ts = pd.Timestamp(text)
        return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    if isinstance(text, (int, float)):
        return pd.Timestamp(float(text), unit="s", tz="UTC")
    s = str(text).strip()
    m = re.fullmatch(r"now(?:\s*-\s*(\S+))?", s)
    if m:
        now = pd.Timestamp(datetime.now(timezone.utc))
        return now - parse_duration(m.group(1)) if m.group(1) else now
    try:
        return pd.Timestamp(float(s), unit="s", tz="UTC")
    except ValueError:
        pass
    try:
        ts = pd.Timestamp(s)
    except ValueError as exc:
        raise InputError(
            f"cannot parse time {s!r}",
            hint="use ISO 8601 (2014-02-14 14:27:00), unix seconds, or now-1h",
        ) from exc
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
