"""Long frames onto per-series grids: order, repeats, id types, missing timestamps."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from aiops.errors import InputError
from aiops.models.data import check_frame, to_panel


def _frame(rows):
    return pd.DataFrame(rows, columns=["series_id", "ts", "value"])


def test_check_frame_sorts_by_series_then_time_and_keeps_the_last_repeat_on_the_grid():
    t = pd.Timestamp("2026-01-01", tz="UTC")
    step = pd.Timedelta("1min")
    shuffled = _frame([
        ("b", t + 2 * step, 5.0), ("a", t + step, 2.0), ("b", t, 3.0), ("a", t, 1.0),
        ("a", t + 3 * step, 4.0), ("b", t + 2 * step, 6.0),
    ])
    f = check_frame(shuffled, duplicates="keep")
    assert f["series_id"].tolist() == ["a", "a", "a", "b", "b", "b"]
    assert f["value"].tolist() == [1.0, 2.0, 4.0, 3.0, 5.0, 6.0]  # stable: the repeat stays after
    assert str(f["ts"].dtype) == "datetime64[ns, UTC]" and isinstance(f.index, pd.RangeIndex)
    p = to_panel(f, step)
    assert p.ids == ["a", "b"] and p.starts == [t, t]
    np.testing.assert_array_equal(p.values[0], [1.0, 2.0, np.nan, 4.0])
    np.testing.assert_array_equal(p.values[1], [3.0, np.nan, 6.0])
    np.testing.assert_array_equal(p.positions[0], [0, 1, 3])
    # to_panel on the unsorted frame gives the same grids
    q = to_panel(shuffled, step)
    assert q.ids == p.ids
    for a, b in zip(p.values, q.values):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(InputError, match=r"duplicate timestamp 2026-01-01 00:02:00.* in series 'b'"):
        check_frame(shuffled)


def test_ids_that_read_the_same_as_text_are_one_series_and_ids_come_back_as_text():
    t = pd.Timestamp("2026-01-01", tz="UTC")
    f = check_frame(_frame([(1, t, 1.0), ("1", t + pd.Timedelta("1min"), 2.0), (2, t, 3.0)]))
    assert f["series_id"].tolist() == ["1", "1", "2"]
    assert to_panel(f).ids == ["1", "2"]


def test_rows_without_a_timestamp_are_rejected_with_the_count():
    f = _frame([("a", "2026-01-01T00:00:00Z", 1.0), ("a", None, 2.0), ("a", pd.NaT, 3.0)])
    with pytest.raises(InputError, match="2 row"):
        check_frame(f)
