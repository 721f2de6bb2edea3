#!/usr/bin/env python3
"""The demo's Python worker, on the pg_conveyor package (clients/python): emails and reports,
beside the shell workers. The same behaviour as examples/demo/handlers/emails.send and
reports.poll: some emails fail transiently (retried with backoff), one bounces for good
(not retryable), a report is released until it is ready (waiting, not a failure).

    worker.py QUEUES     (the PG* variables; stops on SIGINT/SIGTERM, giving its runs back)
"""

import logging
import sys
import time

from pg_conveyor import Fail, Release, Worker


def send_email(job):
    n, to = job.payload["n"], job.payload["to"]
    if to == "nobody@invalid.example":
        raise Fail(f"550 5.1.1 mailbox unavailable: {to}", meta={"smtp": 550}, retryable=False)
    if n % 5 == 0 and job.attempt < 3:
        raise Fail(f"421 4.7.0 try again later (attempt {job.attempt})", meta={"smtp": 421})
    if n % 3 == 0 and job.attempt < 2:
        raise ConnectionResetError("connection reset by smtp.example.com")  # any exception: a failure
    time.sleep(0.2)
    return {"sent_to": to, "by": "python"}


def poll_report(job):
    if job.attempt < 3:
        return Release("2s", f"report {job.payload['report']} is still being built")
    return {"downloaded": job.payload["report"], "by": "python"}


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s python worker: %(message)s", datefmt="%H:%M:%S")
    worker = Worker(queues=sys.argv[1] if len(sys.argv) > 1 else "emails,reports", poll=1.0, batch=5)
    worker.task("emails.send")(send_email)
    worker.task("reports.poll")(poll_report)
    worker.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
