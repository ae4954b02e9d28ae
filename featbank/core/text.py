"""Words for counts and figures in what featbank prints: ``count(1, "image")`` is
"1 image", ``count(2, "image")`` "2 images"."""
from __future__ import annotations


def count(n: int, noun: str, plural: str | None = None) -> str:
    """``n`` and the noun, singular or plural (``plural`` where adding "s" is wrong)."""
    return f"{n:,} {noun if n == 1 else plural or noun + 's'}"
