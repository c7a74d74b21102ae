import pytest

from aiops.errors import BadQuery
from aiops.promql import parse_selector
from aiops.timeutil import format_duration, parse_duration, parse_time
from aiops.types import parse_series_id, series_id


def test_series_id_is_stable_and_round_trips():
    labels = {"__name__": "http_requests_total", "path": 'a"b\\c\nd', "code": "200"}
    sid = series_id(labels)
    assert sid == series_id(dict(reversed(list(labels.items()))))
    assert sid.startswith('http_requests_total{code="200",path=')
    assert parse_series_id(sid) == labels
    assert parse_series_id("up") == {"__name__": "up"}
    assert parse_series_id('{a="1"}') == {"a": "1"}
    with pytest.raises(ValueError):
        parse_series_id('up{a=1}')


@pytest.mark.parametrize(
    "query,labels,hit",
    [
        ('up{job="a"}', {"__name__": "up", "job": "a"}, True),
        ('up{job!="a"}', {"__name__": "up", "job": "a"}, False),
        ('up{job=~"a|b"}', {"__name__": "up", "job": "b"}, True),
        ('up{job=~"a"}', {"__name__": "up", "job": "ab"}, False),  # anchored
        ('up{job!~"a.*"}', {"__name__": "up", "job": "xa"}, True),
        ('{__name__=~"node_.*", instance="x"}', {"__name__": "node_load1", "instance": "x"}, True),
    ],
)
def test_selector_matching(query, labels, hit):
    assert parse_selector(query).matches(labels) is hit


@pytest.mark.parametrize("query", ["rate(up[5m])", 'up{job=~"("}', '{job=~".*"}', "up{job=a}"])
def test_bad_selectors_are_bad_queries(query):
    with pytest.raises(BadQuery):
        parse_selector(query)


def test_durations_and_times():
    assert parse_duration("1h30m").total_seconds() == 5400
    assert parse_duration(90).total_seconds() == 90
    assert format_duration(parse_duration("1w1d")) == "1w1d"
    for bad in ("5x", "", "-5m", "m5"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    assert parse_time("2014-02-14 14:27:00").isoformat() == "2014-02-14T14:27:00+00:00"
    assert parse_time("1392388020") == parse_time("2014-02-14T14:27:00Z")
    assert parse_time("now-1h") < parse_time("now")
