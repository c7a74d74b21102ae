"""``aiops forecast``, ``aiops detect`` and ``aiops models list|promote|rollback``."""

from __future__ import annotations

import logging

import click
import numpy as np
import pandas as pd

from aiops.errors import InputError

logger = logging.getLogger(__name__)


KEEP_DUPLICATES_HELP = ("A repeated timestamp of a series (a clock set back, e.g. for daylight saving) "
                        "is kept instead of rejected; the last of its values stands for that step.")


def read_series_csv(path: str, *, keep_duplicates: bool = False) -> tuple[pd.DataFrame, str, bool]:
    """Read ``timestamp,value`` or ``timestamp,series,value``; return (long frame, ts form, has series).

    A repeated timestamp within a series is an error unless ``keep_duplicates`` (then every row
    is returned and the caller decides which stands).

    Raises:
        InputError: naming the first bad data row (1-based, header not counted).
    """
    from aiops.timeutil import parse_timestamps

    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {path}: {exc}", hint="a CSV with a header: timestamp,value") from None
    cols = [c.strip().lower() for c in raw.columns]
    raw.columns = cols
    if "timestamp" not in cols or "value" not in cols:
        raise InputError(
            f"{path}: expected columns timestamp,value or timestamp,series,value, got {','.join(cols)}"
        )
    if raw.empty:
        raise InputError(f"{path}: no data rows", hint="give at least a few rows of timestamp,value")
    has_series = "series" in cols
    ts, form = parse_timestamps(raw["timestamp"])
    text = raw["value"].str.strip()
    vals = pd.to_numeric(text.replace({"": "nan", "NaN": "nan", "null": "nan"}), errors="coerce")
    bad = vals.isna() & ~text.str.lower().isin(["", "nan", "null"])
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise InputError(f"{path}: value {text.iloc[i]!r} on data row {i + 1} is not a number")
    sid = raw["series"].astype(str) if has_series else pd.Series("value", index=raw.index)
    frame = pd.DataFrame({"series_id": sid.to_numpy(), "ts": ts.to_numpy(), "value": vals.astype("float64").to_numpy()})
    dup = frame.duplicated(["series_id", "ts"])
    if dup.any() and keep_duplicates:
        logger.info("%s: %d rows repeat an earlier timestamp of their series; the last value stands", path, int(dup.sum()))
    elif dup.any():
        i = int(np.flatnonzero(dup.to_numpy())[0])
        where = f" of series {frame['series_id'].iloc[i]!r}" if has_series else ""
        raise InputError(
            f"{path}: duplicate timestamp {raw['timestamp'].iloc[i]!r}{where} on data row {i + 1}",
            hint="each series needs one value per timestamp; --keep-duplicates lets the last value of a "
            "repeated timestamp stand (e.g. a clock set back for daylight saving)",
        )
    return frame, form, has_series


def _write(out: pd.DataFrame, path: str) -> None:
    try:
        out.to_csv(path, index=False)
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror}") from None


@click.command("forecast")
@click.option("--input", "input_path", required=True, type=click.Path(dir_okay=False), help="CSV: timestamp,value or timestamp,series,value.")
@click.option("--horizon", required=True, help="Steps to forecast (288) or a duration (1d).")
@click.option("--output", "output_path", required=True, type=click.Path(dir_okay=False), help="CSV to write.")
@click.option("--level", default=80.0, show_default=True, help="Central interval level in percent.")
@click.option("--model", default="auto", show_default=True, help="Model kind (auto, neural, robust, seasonal_naive).")
@click.option("--seed", default=0, show_default=True)
@click.option("--keep-duplicates", is_flag=True, help=KEEP_DUPLICATES_HELP)
def forecast_cmd(input_path, horizon, output_path, level, model, seed, keep_duplicates) -> None:
    """Forecast each series of a CSV past its last timestamp with a calibrated band."""
    from aiops.models.api import forecast_frame
    from aiops.timeutil import format_timestamps

    frame, form, has_series = read_series_csv(input_path, keep_duplicates=keep_duplicates)
    if keep_duplicates:
        frame = frame.drop_duplicates(["series_id", "ts"], keep="last")
    fc = forecast_frame(frame, horizon, level=_level(level), model=model, seed=seed)
    out = pd.DataFrame({"timestamp": format_timestamps(fc["ts"], form).to_numpy()})
    if has_series:
        out.insert(0, "series", fc["series_id"].to_numpy())
    for c in ("yhat", "yhat_lower", "yhat_upper"):
        out[c] = fc[c].to_numpy()
    _write(out, output_path)
    click.echo(f"wrote {len(out)} rows to {output_path}", err=True)


@click.command("detect")
@click.option("--input", "input_path", required=True, type=click.Path(dir_okay=False), help="CSV: timestamp,value or timestamp,series,value.")
@click.option("--output", "output_path", required=True, type=click.Path(dir_okay=False), help="CSV to write.")
@click.option("--level", default=80.0, show_default=True, help="Band level in percent (score 1.0 = its edge).")
@click.option("--threshold", default=1.0, show_default=True, help="Score at or above which is_anomaly is 1.")
@click.option("--model", default="auto", show_default=True)
@click.option("--refit-every", default=None, help="Refit period: steps or a duration (default 1 day).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--keep-duplicates", is_flag=True, help=KEEP_DUPLICATES_HELP + " Every input row still gets an output row: the step has one band, and each of its rows is scored by its own value.")
def detect_cmd(input_path, output_path, level, threshold, model, refit_every, quiet, keep_duplicates) -> None:
    """Causal backtest: score every row from the rows before it, as the scheduler would."""
    from aiops.models.api import detect_frame
    from aiops.timeutil import format_timestamps

    frame, form, has_series = read_series_csv(input_path, keep_duplicates=keep_duplicates)
    order = frame.sort_values(["series_id", "ts"], kind="stable").index
    sc = detect_frame(frame, level=_level(level), model=model, refit_every=refit_every, progress=not quiet)
    sc.index = order  # detect_frame returns rows sorted by series then time
    sc = sc.sort_index()
    out = pd.DataFrame({"timestamp": format_timestamps(sc["ts"], form).to_numpy()})
    if has_series:
        out.insert(0, "series", sc["series_id"].to_numpy())
    for c in ("value", "anomaly_score", "yhat", "yhat_lower", "yhat_upper"):
        out[c] = sc[c].to_numpy()
    out["is_anomaly"] = (out["anomaly_score"] >= threshold).astype(int)
    _write(out, output_path)
    click.echo(f"scored {len(out)} rows, {int(out['is_anomaly'].sum())} at or above {threshold}", err=True)


def _level(level: float) -> float:
    lv = level / 100.0 if level > 1 else level
    if not 0 < lv < 1:
        raise InputError(f"--level must be between 0 and 100, got {level}")
    return lv


@click.group("models")
def models_group() -> None:
    """Model versions per watch: list, promote, roll back."""


def _store(config_file):
    from aiops.cli import load_config_or_exit
    from aiops.store import Store

    cfg = load_config_or_exit(config_file)
    return Store.open(cfg.store.url)


@models_group.command("list")
@click.option("-c", "--config", "config_file", type=click.Path(dir_okay=False), help="Config file (store.url).")
@click.option("--watch", default=None, help="Only this watch.")
def models_list(config_file, watch) -> None:
    """Show model versions with status, validation error and drift."""
    from aiops.models.lifecycle import list_versions

    rows = list_versions(_store(config_file), watch)
    if not rows:
        click.echo("no model versions yet")
        return
    click.echo(f"{'watch':<20}{'ver':>5}  {'kind':<16}{'status':<10}{'val_error':>10}{'drift':>8}  created")
    for r in rows:
        ve = f"{r['val_error']:.4g}" if r["val_error"] is not None else "-"
        dr = f"{r['drift']:.2f}" if r["drift"] is not None else "-"
        click.echo(f"{r['watch']:<20}{r['version']:>5}  {r['kind']:<16}{r['status']:<10}{ve:>10}{dr:>8}  {r['created_at']:%Y-%m-%d %H:%M}")


@models_group.command("promote")
@click.option("-c", "--config", "config_file", type=click.Path(dir_okay=False))
@click.argument("watch")
@click.argument("version", type=int)
def models_promote(config_file, watch, version) -> None:
    """Serve VERSION of WATCH (the serving one is retired)."""
    from aiops.models.lifecycle import promote

    promote(_store(config_file), watch, version)
    click.echo(f"{watch}: serving version {version}")


@models_group.command("rollback")
@click.option("-c", "--config", "config_file", type=click.Path(dir_okay=False))
@click.argument("watch")
def models_rollback(config_file, watch) -> None:
    """Serve the version that served before the current one."""
    from aiops.models.lifecycle import rollback

    v = rollback(_store(config_file), watch)
    click.echo(f"{watch}: rolled back to version {v}")


COMMANDS = [forecast_cmd, detect_cmd, models_group]
