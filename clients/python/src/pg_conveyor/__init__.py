"""pg_conveyor for Python: workers and producers for the job queue inside PostgreSQL.

Producers enqueue on their own connection, inside their own transaction (`enqueue`,
`enqueue_many`, `enqueue_async`); workers register a handler per task and run (`Worker`, or
`AsyncWorker` on asyncio).
"""

from .durations import duration
from .errors import STALE_LEASE, Cancelled, Fail, Interrupted, Release
from .producer import enqueue, enqueue_async, enqueue_many, enqueue_many_async
from .records import ClaimedRun, Finished
from .worker import Job, Worker
from .aio import AsyncJob, AsyncWorker

__all__ = ["Worker", "Job", "AsyncWorker", "AsyncJob", "ClaimedRun", "Finished", "Release", "Fail", "Cancelled", "Interrupted",
           "STALE_LEASE", "enqueue", "enqueue_many", "enqueue_async", "enqueue_many_async", "duration"]
__version__ = "0.2.0"
