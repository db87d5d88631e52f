"""Loss curves in the terminal: the training loss as a braille line, validation as dots.

Each character cell holds 2 x 4 braille dots, so a 60 x 10 chart has 120 x 40 points of
resolution. The two series differ by mark as well as by colour, so they stay apart without
colour (NO_COLOR, a pipe).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

from rich.text import Text

# Braille dot (x, y) within a cell -> its bit in U+2800 + bits.
DOTS = {(0, 0): 0x01, (0, 1): 0x02, (0, 2): 0x04, (1, 0): 0x08, (1, 1): 0x10, (1, 2): 0x20}
DOTS |= {(0, 3): 0x40, (1, 3): 0x80}
TRAIN_STYLE, VAL_STYLE = "cyan", "magenta"
VAL_MARK = "•"

Points = Sequence[tuple[float, float]]


def label(value: float, decimals: int) -> str:
    return f"{value:.{decimals}f}"


def axis_decimals(low: float, high: float) -> int:
    """Enough decimals that the top, middle and bottom labels differ."""
    span = high - low
    return min(6, max(2, 1 - math.floor(math.log10(span / 2)))) if span > 0 else 2


def line_pixels(points: list[tuple[int, int]]) -> set[tuple[int, int]]:
    """The pixels of straight segments joining consecutive points."""
    pixels = set(points[:1])
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        steps = max(abs(x1 - x0), abs(y1 - y0), 1)
        for i in range(1, steps + 1):
            pixels.add((round(x0 + (x1 - x0) * i / steps), round(y0 + (y1 - y0) * i / steps)))
    return pixels


def finite(series: Points) -> list[tuple[float, float]]:
    return [(x, y) for x, y in series if y is not None and math.isfinite(y)]


def bounds(*series: Points) -> tuple[float, float, float, float] | None:
    """(first step, last step, lowest loss, highest loss) over the series; None if empty."""
    points = [p for s in series for p in finite(s)]
    if not points:
        return None
    xs, ys = [x for x, _ in points], [y for _, y in points]
    return min(xs), max(xs), min(ys), max(ys)


def loss_chart(
    train: Points,
    val: Points,
    width: int = 60,
    height: int = 10,
    indent: int = 0,
    axes: tuple[float, float, float, float] | None = None,
    legend: bool = True,
) -> Text:
    """A chart of the two series over steps, with a labelled loss axis, a step axis and a
    legend; an explanation instead when there is nothing to draw. `axes`: (first step, last
    step, lowest, highest loss) to draw on, so that charts side by side share their scales."""
    train, val = finite(train), finite(val)
    points = train + val
    if len(points) < 2:
        return Text("(no loss curve: fewer than two evaluations were recorded)")
    x_low, x_high, y_low, y_high = axes or bounds(train, val)  # type: ignore[misc]
    if y_high == y_low:
        y_low, y_high = y_low - 0.5, y_high + 0.5
    x_span = (x_high - x_low) or 1

    def pixel(x: float, y: float) -> tuple[int, int]:
        px = round((x - x_low) / x_span * (2 * width - 1))
        py = round((y_high - y) / (y_high - y_low) * (4 * height - 1))
        return px, py

    cells: dict[tuple[int, int], int] = {}
    for px, py in line_pixels([pixel(x, y) for x, y in train]):
        key = (px // 2, py // 4)
        cells[key] = cells.get(key, 0) | DOTS[(px % 2, py % 4)]
    marks = {(px // 2, py // 4) for px, py in (pixel(x, y) for x, y in val)}

    decimals = axis_decimals(y_low, y_high)
    labels = {0: label(y_high, decimals), height - 1: label(y_low, decimals)}
    if height >= 3:
        labels[(height - 1) // 2] = label(
            y_high - (y_high - y_low) * ((height - 1) // 2) / (height - 1), decimals
        )
    pad = max(len(v) for v in labels.values()) + indent
    chart = Text()
    chart.append(" " * pad + "  loss\n")
    for row in range(height):
        chart.append(labels.get(row, "").rjust(pad) + (" ┤" if row in labels else " │"))
        for col in range(width):
            if (col, row) in marks:
                chart.append(VAL_MARK, style=VAL_STYLE)
            elif (col, row) in cells:
                chart.append(chr(0x2800 + cells[(col, row)]), style=TRAIN_STYLE)
            else:
                chart.append(" ")
        chart.append("\n")
    chart.append(" " * pad + " └" + "─" * width + "\n")
    left, right = f"{x_low:,.0f}", f"{x_high:,.0f}"
    chart.append(" " * (pad + 2) + left + right.rjust(width - len(left)) + "  step")
    if legend:
        chart.append("\n" + " " * (pad + 2))
        chart.append_text(legend_line(bool(train), bool(val)))
    return chart


def legend_line(train: bool = True, val: bool = True) -> Text:
    """What the marks of a chart mean."""
    chart = Text()
    if train:
        chart.append("⠉⠒⠤", style=TRAIN_STYLE)
        chart.append(" train loss  ")
    if val:
        chart.append(VAL_MARK, style=VAL_STYLE)
        chart.append(" validation loss")
    return chart
