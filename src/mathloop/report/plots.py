"""Inline SVG line charts for the report: no plotting library, no script, so a plot shows even with JavaScript off.

A chart is a list of `Series` on one pair of axes; each point may carry an interval (drawn as a vertical bar at
that point) and a series may carry a band (a shaded area, e.g. reward mean +- std).
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field

PALETTE = ("#1f5fa8", "#d9622b", "#2a9d5c", "#9b3fb5", "#b8860b", "#c0392b", "#17a2b8", "#555555")
# The chart's look where no report.css is around (an SVG file on its own, e.g. a loop folder's accuracy.svg).
STANDALONE_CSS = ("svg.chart{background:#fff;font:11px system-ui,sans-serif}.frame{fill:none;stroke:#aab}"
                  ".grid{stroke:#eef0f3}.chart-title{font-weight:600;font-size:12px}")


@dataclass
class Series:
    name: str
    x: list[float]
    y: list[float | None]
    low: list[float | None] | None = None  # interval bars at each point (e.g. a 95% CI)
    high: list[float | None] | None = None
    band: bool = False  # draw low..high as a shaded band instead of bars
    extra: dict = field(default_factory=dict)


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About `count` round tick values covering [lo, hi].

    >>> nice_ticks(0, 1)
    [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    >>> nice_ticks(3, 3)
    [2.6, 2.8, 3.0, 3.2, 3.4]
    >>> nice_ticks(2e-5, 2e-5)
    [1.8e-05, 1.9e-05, 2e-05, 2.1e-05, 2.2e-05]
    """
    if hi <= lo:  # a flat line: a window of +-10% around it (+-1 around 0)
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    return [float(f"{k * step:.12g}") for k in range(first, last + 1)]


def _format_tick(value: float, percent: bool) -> str:
    if percent:
        return f"{100 * value:.0f}%"
    return f"{value:.3g}"


def line_chart(title: str, series: list[Series], x_label: str = "step", percent: bool = False,
               x_names: list[str] | None = None, width: int = 420, height: int = 240, standalone: bool = False) -> str:
    """An SVG line chart; `x_names` labels integer x positions (rounds, runs) instead of numeric ticks.
    `standalone` carries its own style, for an .svg file shown outside the report."""
    left, right, top, bottom = 52, 12, 26, 38
    plot_w, plot_h = width - left - right, height - top - bottom
    points = [(x, y) for s in series for x, y in zip(s.x, s.y) if y is not None and math.isfinite(y)]
    values = [y for _, y in points] + [v for s in series for v in (s.low or []) + (s.high or [])
                                       if v is not None and math.isfinite(v)]
    esc = html.escape
    parts = [f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" '
             f'height="{height}" role="img" aria-label="{esc(title)}">',
             f'<text x="{left}" y="16" class="chart-title">{esc(title)}</text>']
    if standalone:
        parts.insert(1, f"<style>{STANDALONE_CSS}</style>")
    if not points:
        parts.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle">no data</text></svg>')
        return "".join(parts)
    xs = [x for x, _ in points]
    x_lo, x_hi = min(xs), max(xs)
    if x_names is not None:
        x_lo, x_hi = -0.5, len(x_names) - 0.5
    elif x_hi == x_lo:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    y_ticks = nice_ticks(0.0, 1.0) if percent and 0 <= min(values) and max(values) <= 1 else \
        nice_ticks(min(values), max(values))
    y_lo, y_hi = y_ticks[0], y_ticks[-1]

    def px(x: float) -> float:
        return left + plot_w * (x - x_lo) / (x_hi - x_lo)

    def py(y: float) -> float:
        return top + plot_h * (1 - (y - y_lo) / (y_hi - y_lo))

    parts.append(f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" class="frame"/>')
    for tick in y_ticks:
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{py(tick):.1f}" y2="{py(tick):.1f}" class="grid"/>'
                     f'<text x="{left - 5}" y="{py(tick) + 4:.1f}" text-anchor="end">{_format_tick(tick, percent)}</text>')
    if x_names is not None:
        for i, name in enumerate(x_names):
            parts.append(f'<text x="{px(i):.1f}" y="{top + plot_h + 15}" text-anchor="middle">{esc(name)}</text>')
    else:
        for tick in nice_ticks(x_lo, x_hi, 5):
            if x_lo <= tick <= x_hi:
                parts.append(f'<text x="{px(tick):.1f}" y="{top + plot_h + 15}" text-anchor="middle">'
                             f'{_format_tick(tick, False)}</text>')
    parts.append(f'<text x="{left + plot_w / 2}" y="{height - 4}" text-anchor="middle" class="axis-label">'
                 f'{esc(x_label)}</text>')
    for i, s in enumerate(series):
        color = PALETTE[i % len(PALETTE)]
        pts = [(px(x), py(y)) for x, y in zip(s.x, s.y) if y is not None and math.isfinite(y)]
        if s.low is not None and s.high is not None:
            pairs = [(x, lo, hi) for x, lo, hi in zip(s.x, s.low, s.high) if lo is not None and hi is not None]
            if s.band and pairs:
                outline = [f"{px(x):.1f},{py(hi):.1f}" for x, _, hi in pairs] + \
                          [f"{px(x):.1f},{py(lo):.1f}" for x, lo, _ in reversed(pairs)]
                parts.append(f'<polygon points="{" ".join(outline)}" fill="{color}" fill-opacity="0.15" stroke="none"/>')
            else:
                for x, lo, hi in pairs:
                    parts.append(f'<line x1="{px(x):.1f}" x2="{px(x):.1f}" y1="{py(lo):.1f}" y2="{py(hi):.1f}" '
                                 f'stroke="{color}" stroke-width="1.5"/>')
        if len(pts) > 1:
            parts.append(f'<polyline points="{" ".join(f"{x:.1f},{y:.1f}" for x, y in pts)}" fill="none" '
                         f'stroke="{color}" stroke-width="1.8"/>')
        if len(pts) <= 60:
            parts += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.8" fill="{color}"/>' for x, y in pts]
    if len(series) > 1 or series[0].name:
        for i, s in enumerate(series):
            y = top + 6 + 13 * i
            parts.append(f'<rect x="{left + 8}" y="{y}" width="10" height="3" fill="{PALETTE[i % len(PALETTE)]}"/>'
                         f'<text x="{left + 22}" y="{y + 5}" class="legend">{esc(s.name)}</text>')
    parts.append("</svg>")
    return "".join(parts)
