"""Charts for the dashboard and the HTML report: SVG drawn on the server by
pygal, then made fit for a page whose CSP allows no script and no inline
style: pygal's `<script>` (its tooltips), `<style>` and `style=` attributes are
removed, and its stylesheet is served from the page's own origin
(`chart_css`). The figures are in a table beside each chart as well."""

from __future__ import annotations

import functools
import re
import sys
import xml.etree.ElementTree as ET
from collections.abc import Sequence

import pygal
from pygal.style import Style

# pygal puts an import hook on sys.meta_path for its `pygal.maps.*` plugins
# (not used here); it implements only the old finder API, so every later
# import in the process raises an ImportWarning. Taken off again.
sys.meta_path[:] = [f for f in sys.meta_path if type(f).__module__ != "pygal"]

SVG = "http://www.w3.org/2000/svg"
XLINK = "http://www.w3.org/1999/xlink"
ET.register_namespace("", SVG)
ET.register_namespace("xlink", XLINK)

FORWARDED, HELD, REFUSED, NEUTRAL = "#1e7b43", "#c26a00", "#a3261b", "#1f5fa8"
FORWARDED_INDEX, HELD_INDEX, REFUSED_INDEX, NEUTRAL_INDEX = range(4)
# Values are printed on the bars up to this many bars; beyond, the table says them.
PRINTED_BARS = 31

_STYLE = Style(
    background="#ffffff",
    plot_background="#ffffff",
    foreground="#1d2430",
    foreground_strong="#1d2430",
    foreground_subtle="#5b6475",
    opacity=".9",
    opacity_hover=".9",
    transition="0ms",
    colors=(FORWARDED, HELD, REFUSED, NEUTRAL),
    font_family="system-ui, sans-serif",
    value_font_size=11,
    label_font_size=11,
    major_label_font_size=11,
    legend_font_size=12,
    title_font_size=14,
)


def _config(**options: object) -> pygal.Config:
    config = pygal.Config(
        js=[],
        disable_xml_declaration=True,
        style=_STYLE,
        width=760,
        height=300,
        legend_at_bottom=True,
        print_zeroes=False,
        truncate_label=-1,
        show_y_guides=True,
        margin=12,
    )
    for name, value in options.items():
        setattr(config, name, value)
    return config


def _clean(chart: pygal.graph.graph.Graph, label: str, color: int = 0) -> str:
    """The chart's SVG without script, style or tooltips, labelled for screen
    readers (the table beside it has the same figures)."""
    # pygal's own output, labels from rule ids and addresses it escaped.
    root = ET.fromstring(chart.render(is_unicode=True))  # noqa: S314
    for parent in list(root.iter()):
        for child in list(parent):
            tag = child.tag.rsplit("}", 1)[-1]
            if tag in ("script", "style") or "tooltip" in child.get("class", "").split():
                parent.remove(child)
    for element in root.iter():
        element.attrib.pop("style", None)
        if color and "color-0" in element.get("class", ""):
            element.set("class", element.get("class", "").replace("color-0", f"color-{color}"))
    root.set("role", "img")
    root.set("aria-label", label)
    root.set("class", "pygal-chart chart")
    for title in root.iter(f"{{{SVG}}}title"):
        if title.text == "Pygal":
            title.text = label
    return ET.tostring(root, encoding="unicode")


# The same figures draw the same chart: a page shown again (reloaded, the
# other language, another reviewer) while no message came meanwhile reuses it.
CACHED_CHARTS = 64


def daily_chart(
    days: Sequence[str],
    series: Sequence[tuple[str, Sequence[int]]],
    label: str,
) -> str:
    """Stacked bars per day (forwarded, held, refused)."""
    return _daily_chart(tuple(days), tuple((name, tuple(v)) for name, v in series), label)


@functools.lru_cache(maxsize=CACHED_CHARTS)
def _daily_chart(
    days: tuple[str, ...], series: tuple[tuple[str, tuple[int, ...]], ...], label: str
) -> str:
    few = len(days) <= PRINTED_BARS
    options = {
        "print_values": few,
        "x_label_rotation": -45 if few else 0,
        "show_minor_x_labels": few,
        "x_labels_major_count": 12,
    }
    # Up to a month, a bar per day with its figures printed; over 90 or 365
    # days, stacked areas: the same figures drawn as one path per series (a
    # thousand bars would cost pygal half a second and show nothing more).
    chart = (
        pygal.StackedBar(_config(**options))
        if few
        else pygal.StackedLine(_config(fill=True, show_dots=False, **options))
    )
    chart.x_labels = [d[5:] for d in days]
    chart.y_labels = whole_ticks(
        max((sum(day) for day in zip(*(v for _, v in series), strict=True)), default=0)
    )
    for name, values in series:
        chart.add(name, list(values))
    return _clean(chart, label)


def bar_chart(items: Sequence[tuple[str, int]], label: str, color: int = NEUTRAL_INDEX) -> str:
    """Horizontal bars, one per item (an article, a rule, a sender), in the
    colour of `color` (an index in the palette)."""
    return _bar_chart(tuple(items), label, color)


@functools.lru_cache(maxsize=CACHED_CHARTS)
def _bar_chart(items: tuple[tuple[str, int], ...], label: str, color: int) -> str:
    items = items[::-1]  # pygal draws the first bar at the bottom: the table's order, top down
    height = max(140, 60 + 26 * len(items))
    chart = pygal.HorizontalBar(_config(print_values=True, show_legend=False, height=height))
    chart.x_labels = [name for name, _ in items]
    chart.y_labels = whole_ticks(max((count for _, count in items), default=0))
    chart.add(label, [count for _, count in items])
    return _clean(chart, label, color)


def whole_ticks(highest: int, count: int = 8) -> list[int]:
    """Axis ticks in whole messages: 0 to at least `highest`, about `count` of them."""
    step = max(1, -(-highest // count))
    return list(range(0, max(highest, 1) + step, step))


@functools.cache
def chart_css() -> str:
    """pygal's stylesheet for the charts above, scoped to `svg.pygal-chart`."""
    sample = pygal.StackedBar(_config())
    for index in range(len(_STYLE.colors)):  # a colour rule per series
        sample.add(str(index), [1])
    root = ET.fromstring(sample.render(is_unicode=True))  # noqa: S314
    css = "\n".join(
        element.text or "" for element in root.iter() if element.tag.rsplit("}", 1)[-1] == "style"
    )
    return re.sub(r"#chart-[0-9a-f-]+", "svg.pygal-chart", css) + "\n"
