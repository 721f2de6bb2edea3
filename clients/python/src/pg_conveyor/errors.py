"""What a handler raises (or returns) to end its run other than with success, and the SQLSTATEs
the library reacts to."""

from __future__ import annotations

from typing import Any, Optional

#: The lease is stale: it expired and someone else has the run, or the run is over.
STALE_LEASE = "CV001"


class Release(Exception):
    """Not ready yet: the run waits `delay` (e.g. "30s", or seconds) and is claimed again.
    Business waiting, not a failure: it spends no retry budget."""

    def __init__(self, delay: Any, reason: Optional[str] = None, meta: Optional[dict] = None):
        super().__init__(reason or f"released for {delay}")
        self.delay, self.reason, self.meta = delay, reason, meta


class Fail(Exception):
    """A failed attempt: retried with the task's backoff while its budget lasts, if retryable."""

    def __init__(self, message: str, meta: Optional[dict] = None, retryable: bool = True):
        super().__init__(message)
        self.message, self.meta, self.retryable = message, meta, retryable


class Cancelled(Exception):
    """Raise it when `job.heartbeat()` returned True: an operator cancelled the run. The attempt
    ends as `stopped` and the run `cancelled`."""


class Interrupted(Exception):
    """Raised by `job.heartbeat()` when the worker is stopping and its grace period is over: the
    run is given back (queued again at once, no failure counted)."""
