"""Dates given on the command line."""

from __future__ import annotations

from datetime import datetime

from ketch.errors import UsageError


def parse_date(text: str) -> float:
    """Seconds since the epoch, or an ISO 8601 date/time (local time if no offset)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise UsageError(f"invalid date {text!r}: use seconds since the epoch or ISO 8601") from None
