"""The dashboard's and the report's parts on their own: periods and months,
charts fit for a page without script or inline style, and the charter
configuration's differences."""

from __future__ import annotations

import re

import pytest

from apiguard.config import Settings
from apiguard.policy.charter import Charter
from apiguard.reports import charts
from apiguard.reports.charter import canonical, changes, charter_snapshot
from apiguard.reports.figures import Period
from apiguard.reports.monthly import parse_month
from apiguard.reports.records import size_class
from apiguard.reports.web import months_before
from apiguard.reports.words import duration


@pytest.mark.parametrize(
    ("month", "first", "last", "days"),
    [
        ("2026-02", "2026-02-01", "2026-02-28", 28),
        ("2028-02", "2028-02-01", "2028-02-29", 29),
        ("2026-12", "2026-12-01", "2026-12-31", 31),
    ],
)
def test_a_month_is_its_whole_days(month: str, first: str, last: str, days: int) -> None:
    period = Period.month(month)
    assert (period.first, period.last, len(period.days())) == (first, last, days)


@pytest.mark.parametrize("value", ["2026-13", "2026-00", "2026-1", "26-11", "2026-11-01", ""])
def test_only_yyyy_mm_is_a_month(value: str) -> None:
    with pytest.raises(ValueError):
        parse_month(value)


def test_the_months_offered_go_back_across_the_year() -> None:
    assert months_before("2026-02-14", 4) == ["2026-02", "2026-01", "2025-12", "2025-11"]


@pytest.mark.parametrize("days", [7, 30, 365])
def test_charts_carry_no_script_no_style_and_say_what_they_show(days: int) -> None:
    names = [f"2026-01-{n % 28 + 1:02d}" for n in range(days)]
    daily = charts.daily_chart(
        names,
        [("Transmis", [3] * days), ("Retenus", [1] * days), ("Refusés", [0] * days)],
        "Par jour",
    )
    bars = charts.bar_chart([("art1.no-patient-data", 4), ("<script>", 2)], "Par règle")
    for svg in (daily, bars):
        assert svg.startswith("<svg") and 'role="img"' in svg
        assert "<script" not in svg and "<style" not in svg and " style=" not in svg
        assert "Pygal" not in svg
    assert 'aria-label="Par jour"' in daily
    assert "&lt;script&gt;" in bars  # a label is text, escaped
    assert re.search(r'class="value[^"]*"[^>]*>4<', bars)


def test_the_chart_stylesheet_is_scoped_to_the_charts() -> None:
    css = charts.chart_css()
    assert "svg.pygal-chart .color-0" in css.replace("  ", " ") or ".color-0" in css
    assert "#chart-" not in css
    rules = [r for r in re.findall(r"([^{}]+)\{", css) if r.strip()]
    assert all(r.strip().startswith("svg.pygal-chart") for r in rules), rules[:3]


def test_whole_message_ticks() -> None:
    assert charts.whole_ticks(0) == [0, 1]
    assert charts.whole_ticks(3) == [0, 1, 2, 3]
    assert charts.whole_ticks(80)[-1] >= 80 and charts.whole_ticks(80)[1] == 10


def test_a_charter_change_is_listed_setting_by_setting() -> None:
    settings = Settings()
    before = charter_snapshot(Charter.build({}), settings)
    after = charter_snapshot(
        Charter.build({"art5.review-all": {"enabled": True}, "art3.too-large": {"action": "hold"}}),
        Settings.model_validate({"review": {"hold_days": 3}}),
    )
    assert canonical(before)[0] == canonical(charter_snapshot(Charter.build({}), settings))[0]
    assert canonical(before)[0] != canonical(after)[0]
    found = {(c.key, c.before, c.after) for c in changes(before, after, 0.0)}
    assert found == {
        ("art5.review-all.enabled", "false", "true"),
        ("art3.too-large.action", "reject", "hold"),
        ("review.hold_days", "7.0", "3.0"),
    }


@pytest.mark.parametrize(
    ("size", "name"),
    [(0, "<100k"), (102399, "<100k"), (102400, "100k-1M"), (5 << 20, "1M-10M"), (11 << 20, ">10M")],
)
def test_size_classes(size: int, name: str) -> None:
    assert size_class(size) == name


@pytest.mark.parametrize(
    ("seconds", "french", "english"),
    [
        (None, "—", "—"),
        (300, "5 min", "5 min"),
        (10800, "3 h 00 min", "3 h 00 min"),
        (90000, "1 j 1 h", "1 d 1 h"),
    ],
)
def test_durations(seconds: float | None, french: str, english: str) -> None:
    assert (duration(seconds, "fr"), duration(seconds, "en")) == (french, english)
