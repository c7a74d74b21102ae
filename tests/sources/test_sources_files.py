import pandas as pd
import pytest

from aiops.errors import InputError, NoData
from aiops.sources.files import FileSource, load_series_file


def write(tmp_path, text, name="in.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_single_series_iso_naive(tmp_path):
    p = write(tmp_path, "timestamp,value\n2014-02-14 14:30:00,1.5\n2014-02-14 14:35:00,\n2014-02-14 14:40:00,2\n")
    lf = load_series_file(p)
    assert lf.time_form == "iso_naive" and not lf.had_series_column
    assert lf.batch.series_ids == ["in"]
    assert lf.batch.step == pd.Timedelta("5min")
    assert lf.batch.frame["value"].isna().sum() == 1


def test_long_unix_with_label_ids(tmp_path):
    p = write(tmp_path, 'timestamp,series,value\n120,"up{job=""a""}",1\n120,"up{job=""b""}",0\n180,"up{job=""a""}",1\n')
    lf = load_series_file(p)
    assert lf.time_form == "unix" and lf.had_series_column
    assert lf.batch.labels['up{job="b"}'] == {"__name__": "up", "job": "b"}
    src = FileSource(p)
    b = src.fetch('up{job="a"}', pd.Timestamp(120, unit="s", tz="UTC"), pd.Timestamp(180, unit="s", tz="UTC"), pd.Timedelta("60s"))
    assert b.series_ids == ['up{job="a"}'] and b.frame["value"].tolist() == [1.0, 1.0]
    with pytest.raises(NoData):
        src.fetch('up{job="zzz"}', pd.Timestamp(120, unit="s", tz="UTC"), pd.Timestamp(180, unit="s", tz="UTC"), pd.Timedelta("60s"))


@pytest.mark.parametrize(
    "text,match",
    [
        ("timestamp,value\n", "no data rows"),
        ("time,value\n1,2\n", "expected columns timestamp,value"),
        ("timestamp,value\n2014-02-14 14:30:00,1\nyesterday,2\n", "cannot parse timestamp 'yesterday' on data row 2"),
        ("timestamp,value\n2014-02-14 14:30:00,1\n2014-02-14 14:35:00,abc\n", "value 'abc' on data row 2 is not a number"),
        ("timestamp,value\n2014-02-14 14:30:00,1\n2014-02-14 14:30:00,2\n", "duplicate timestamp 2014-02-14 14:30:00"),
    ],
)
def test_bad_input_is_named_precisely(tmp_path, text, match):
    with pytest.raises(InputError, match=match):
        load_series_file(write(tmp_path, text))


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_series_file(tmp_path / "nope.csv")
