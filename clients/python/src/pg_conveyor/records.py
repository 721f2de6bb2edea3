"""Typed records of what pg_conveyor returns."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any, Optional


@dataclass(frozen=True)
class ClaimedRun:
    """One run a claim gave this worker: the columns of conveyor.claim_runs."""

    run_id: str
    lease_token: uuid.UUID
    task: str
    queue: str
    payload: Any
    #: the attempt being made: 1 on the first, attempts ended + 1 after
    attempt: int
    #: failed attempts so far (a retry when > 0) and releases so far
    failures: int
    releases: int
    attempt_id: str
    priority: int
    parent_run_id: Optional[str]
    lease_expires_at: dt.datetime
    timeout_at: Optional[dt.datetime]

    #: the SQL column list these fields are read from, in order
    COLUMNS = ("run_id::text, lease_token, task, queue, payload, attempt, failures, releases, attempt_id::text,"
               " priority, parent_run_id::text, lease_expires_at, timeout_at")


@dataclass(frozen=True)
class Finished:
    """How a run this worker had ended: `outcome` is what the handler did (succeeded, failed,
    released, cancelled, returned); `status` the run's status after it, None when the lease was
    stale (someone else has the run now, or it is over) and nothing was recorded."""

    run: ClaimedRun
    outcome: str
    status: Optional[str]
    detail: Optional[str] = None
