"""Skeleton stage (placeholder until the skeleton issue lands)."""

from __future__ import annotations


def operator_sql(op, pipeline) -> str | None:
    return None
