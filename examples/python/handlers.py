"""The demo handlers of the Python worker: one function per task name.

A handler gets a pg_conveyor Job (run_id, task, payload, attempt, heartbeat()) and returns the
run's result (a JSON-able dict), or raises (or returns) Release / Fail, or raises Cancelled.
"""

import os
import time

from pg_conveyor import Cancelled, Fail, Release

HEARTBEAT_SECONDS = float(os.environ.get("CONVEYOR_HEARTBEAT_SECONDS", "1"))


def ok(job):
    """Completes at once with a small result."""
    return {"ok": True, "by": "python", "echo": {k: v for k, v in job.payload.items() if k != "batch"}}


def flaky(job):
    """Fails on attempt 1, succeeds on attempt 2: the task's retry policy (max_attempts 3,
    delay 1s) brings it back."""
    if job.attempt == 1:
        raise Fail("flaky: failing attempt 1 on purpose", meta={"attempt": job.attempt})
    return {"ok": True, "succeeded_on_attempt": job.attempt}


def wait(job):
    """Releases on attempts 1 and 2 (the thing it waits for is 'not ready'), completes on
    attempt 3. A release is not a failure: it spends no retry budget."""
    if job.attempt < 3:
        raise Release("1s", "not ready")
    return {"ok": True, "ready_on_attempt": job.attempt}


def slow(job):
    """Works for payload.seconds (default 2.5), longer than a heartbeat period, extending its
    lease with a heartbeat every CONVEYOR_HEARTBEAT_SECONDS. A heartbeat that answers true means
    an operator cancelled the run: stop and say so."""
    seconds = float(job.payload.get("seconds", 2.5))
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, HEARTBEAT_SECONDS))  # a slice of the real work
        if job.heartbeat("30s"):
            raise Cancelled()
    return {"ok": True, "slept": seconds, "heartbeats": job.heartbeats}


HANDLERS = {
    "python.ok": ok,
    "python.flaky": flaky,
    "python.wait": wait,
    "python.slow": slow,
}
