"""Small text helpers shared by every layer's user-facing messages."""

from __future__ import annotations

__all__ = ["count"]


def count(n: int, noun: str) -> str:
    """``n`` and ``noun``, plural unless ``n`` is 1: ``count(1, "GPU")`` is "1 GPU", ``count(3, "GPU")``
    "3 GPUs" (English nouns of this tool only: GPU, adapter, plan, round)."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
