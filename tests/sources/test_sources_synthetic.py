import pandas as pd
import pytest

from aiops.errors import BadQuery, NoData, TooManySeries
from aiops.sources.synthetic import SHOP_GRAPH, SyntheticSource, generate_scenario
from aiops.types import parse_series_id

END = "2026-03-02 12:00"


@pytest.fixture(scope="module")
def shop():
    return generate_scenario("shop", seed=3, days=8, end=END)


def test_deterministic_for_seed_and_end(shop):
    again = generate_scenario("shop", seed=3, days=8, end=END)
    pd.testing.assert_frame_equal(shop.batch.frame, again.batch.frame)
    other = generate_scenario("shop", seed=4, days=8, end=END)
    assert not shop.batch.frame["value"].equals(other.batch.frame["value"])


def test_incident_ground_truth_propagates_to_callers(shop):
    (inc,) = shop.incidents
    assert inc.root_cause in SHOP_GRAPH
    w = shop.batch.wide()
    root_sid = next(s for s in inc.affected if "duration" in s and parse_series_id(s)["service"] == inc.root_cause)
    assert inc.affected[root_sid] == inc.start
    before = w.loc[: inc.start - pd.Timedelta("1h"), root_sid].median()
    during = w.loc[inc.start : inc.end, root_sid].median()
    assert during > 3 * before
    for sid, onset in inc.affected.items():
        svc = parse_series_id(sid)["service"]
        assert onset >= inc.start
        if svc != inc.root_cause:
            assert onset > inc.start  # callers see it later
            assert inc.root_cause in _reachable(svc)


def _reachable(svc):
    seen, todo = set(), [svc]
    while todo:
        for c in SHOP_GRAPH[todo.pop()]:
            if c not in seen:
                seen.add(c)
                todo.append(c)
    return seen


def test_realistic_artifacts(shop):
    f = shop.batch.frame
    assert 0 < f["value"].isna().mean() < 0.02  # missed scrapes
    w = shop.batch.wide()
    counter = w['http_requests_total{job="shop",service="cart"}'].dropna()
    assert (counter.diff() < 0).sum() == 1  # one counter reset after the restart
    assert (w['up{job="shop",service="cart"}'] == 0).sum() == 3
    rps = w['http_requests_per_second{job="shop",service="frontend"}']
    by_hour = rps.groupby(rps.index.hour).mean()
    assert by_hour.max() > 2 * by_hour.min()  # daily seasonality


def test_source_fetch_selects_and_aligns():
    src = SyntheticSource("shop", seed=3, days=8, end=END)
    end = pd.Timestamp(END, tz="UTC")
    b = src.fetch('http_errors_ratio{service=~"db|cart"}', end - pd.Timedelta("1d"), end, pd.Timedelta("15min"))
    assert sorted(parse_series_id(s)["service"] for s in b.series_ids) == ["cart", "db"]
    per = b.frame.groupby("series_id")["ts"].agg(["count", "min", "max"])
    assert (per["count"] == 97).all() and (per["max"] == end).all()
    assert (b.frame["ts"].dt.minute % 15 == 0).all()
    with pytest.raises(NoData, match="hint: synthetic metrics"):
        src.fetch("nope", end - pd.Timedelta("1h"), end, pd.Timedelta("5m"), watch="w")
    with pytest.raises(TooManySeries) as ei:
        src.fetch("http_errors_ratio", end - pd.Timedelta("1h"), end, pd.Timedelta("5m"), max_series=2)
    assert ei.value.count == 7 and ei.value.limit == 2
    with pytest.raises(BadQuery):
        src.fetch("rate(http_requests_total[5m])", end - pd.Timedelta("1h"), end, pd.Timedelta("5m"))


def test_other_scenarios():
    q = generate_scenario("quiet", seed=1, days=2, end=END)
    assert q.incidents == []
    with pytest.raises(ValueError, match="unknown scenario"):
        generate_scenario("nope")
