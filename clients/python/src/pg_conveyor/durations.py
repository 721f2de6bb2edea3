"""Durations as pg_conveyor takes them: text ("30s", "1m30s", "00:05:00"), seconds, or a
timedelta."""

from __future__ import annotations

import datetime as dt
from typing import Union

Duration = Union[str, int, float, dt.timedelta]


def duration(value: Duration) -> str:
    """The text form of a duration: strings pass as they are (the server checks them),
    seconds and timedeltas become milliseconds."""
    if isinstance(value, str):
        return value
    if isinstance(value, dt.timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"a duration is text, seconds or a timedelta, got {type(value).__name__}")
    return f"{round(value * 1000)}ms"

