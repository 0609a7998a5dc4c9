"""Sizes for people to read (the registry's exact sizes are `grants.format_size`)."""

from __future__ import annotations


def human_size(n: int) -> str:
    """1.5M, 312K, 80 bytes: rounded to one decimal, binary units."""
    for unit, size in (("T", 1024**4), ("G", 1024**3), ("M", 1024**2), ("K", 1024)):
        if n >= size:
            return f"{n / size:.1f}{unit}".replace(".0" + unit, unit)
    return f"{n} bytes"
