"""Small inline SVG charts of a repository's size: drawn on the server, so the
page needs no script and the strict Content-Security-Policy holds."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    points: str  # an SVG polyline's points
    area: str  # the same line closed along the bottom, for a filled area
    low: int
    high: int


def chart(values: list[int], width: int = 120, height: int = 24, pad: int = 2) -> Chart | None:
    """The values as a line from left to right, scaled between their lowest and
    highest (a flat line at mid height when they are all equal)."""
    if len(values) < 2:
        return None
    low, high = min(values), max(values)
    span = high - low
    step = (width - 2 * pad) / (len(values) - 1)
    pts = []
    for i, v in enumerate(values):
        y = height / 2 if span == 0 else pad + (height - 2 * pad) * (1 - (v - low) / span)
        pts.append(f"{pad + i * step:.1f},{y:.1f}")
    line = " ".join(pts)
    area = f"{pad:.1f},{height - pad:.1f} {line} {width - pad:.1f},{height - pad:.1f}"
    return Chart(width, height, line, area, low, high)


def human_bytes(n: float | None) -> str:
    if n is None:
        return "–"
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n:,.1f} PB"  # pragma: no cover - the loop returns at TB
