"""Line charts of per-round metrics, drawn on the server as SVG (no chart library, no script)."""

from __future__ import annotations

from dataclasses import dataclass

WIDTH, HEIGHT = 560, 220
LEFT, RIGHT, TOP, BOTTOM = 48, 12, 14, 30


@dataclass(frozen=True)
class Series:
    """One line: its label, CSS class, and a value per round (None where it is missing)."""

    label: str
    css: str
    values: list[float | None]


@dataclass(frozen=True)
class Chart:
    """Everything the template needs to draw one chart."""

    title: str
    lines: list[tuple[Series, str]]  # (series, SVG polyline points)
    dots: list[tuple[str, float, float, str]]  # (css, x, y, tooltip)
    y_ticks: list[tuple[float, str]]  # (y, label)
    x_ticks: list[tuple[float, str]]
    width: int = WIDTH
    height: int = HEIGHT

    @property
    def empty(self) -> bool:
        """No value to draw yet."""
        return not self.dots


def _bounds(series: list[Series], floor: float | None, ceiling: float | None) -> tuple[float, float]:
    values = [v for s in series for v in s.values if v is not None]
    low = floor if floor is not None else min(values, default=0.0)
    high = ceiling if ceiling is not None else max(values, default=1.0)
    if high - low < 1e-9:
        high = low + 1.0
    return low, high


def line_chart(title: str, rounds: list[int], series: list[Series], *,
               floor: float | None = None, ceiling: float | None = None) -> Chart:
    """A chart of `series` against `rounds` (the y axis fixed to [floor, ceiling] when given)."""
    low, high = _bounds(series, floor, ceiling)
    span_x = max(len(rounds) - 1, 1)

    def x_at(index: int) -> float:
        return round(LEFT + (WIDTH - LEFT - RIGHT) * (index / span_x if len(rounds) > 1 else 0.5), 1)

    def y_at(value: float) -> float:
        return round(TOP + (HEIGHT - TOP - BOTTOM) * (1 - (value - low) / (high - low)), 1)

    lines, dots = [], []
    for item in series:
        points = [(x_at(i), y_at(v), r, v) for i, (r, v) in enumerate(zip(rounds, item.values))
                  if v is not None]
        lines.append((item, " ".join(f"{x},{y}" for x, y, _, _ in points)))
        dots += [(item.css, x, y, f"round {r}: {item.label} {v:.4f}") for x, y, r, v in points]
    y_ticks = [(y_at(low + (high - low) * k / 4), f"{low + (high - low) * k / 4:.3g}") for k in range(5)]
    step = max(1, len(rounds) // 10)
    x_ticks = [(x_at(i), str(r)) for i, r in enumerate(rounds) if i % step == 0 or i == len(rounds) - 1]
    return Chart(title, lines, dots, y_ticks, x_ticks)
