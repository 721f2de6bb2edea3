"""Fixtures: a real PostgreSQL with pg_conveyor, reached through the PG* variables
(make test points them at its cluster). CONVEYOR_PGBOUNCER, when set, is a conninfo through a
PgBouncer in transaction mode in front of the same database."""

from __future__ import annotations

import threading
import uuid

import psycopg
import pytest


@pytest.fixture(scope="session")
def db():
    """An autocommit connection for setup and checks."""
    conn = psycopg.connect("", autocommit=True)
    (ext,) = conn.execute("select count(*) from pg_extension where extname = 'pg_conveyor'").fetchone()
    if ext == 0:
        pytest.fail("pg_conveyor is not created in this database (create extension pg_conveyor)")
    yield conn
    conn.close()


@pytest.fixture(scope="session", autouse=True)
def ticker(db):
    """Retries and releases come back through tick: without a background worker ticking this
    database, tick from here every 100 ms."""
    (workers,) = db.execute("select count(*) from pg_stat_activity where backend_type = 'pg_conveyor'"
                            " and datname = current_database()").fetchone()
    stop = threading.Event()
    thread = None
    if workers == 0:
        def tick():
            with psycopg.connect("", autocommit=True) as c:
                while not stop.wait(0.1):
                    c.execute("select from conveyor.tick()")
        thread = threading.Thread(target=tick, daemon=True)
        thread.start()
    yield
    stop.set()
    if thread is not None:
        thread.join()


@pytest.fixture
def queue(db):
    """A fresh queue name; its tasks are defined by the test as `<queue>.<name>`."""
    return f"py_{uuid.uuid4().hex[:10]}"


def define(db, queue: str, name: str, **options) -> str:
    """Define task `<queue>.<name>` in `queue`; returns the task name."""
    task = f"{queue}.{name}"
    args = ", ".join(f"{k} => %({k})s" for k in options)
    db.execute(f"select conveyor.define_task(%(task)s, queue => %(queue)s{', ' + args if args else ''})",
               {"task": task, "queue": queue, **options})
    return task


def run_worker(worker, timeout: float = 60.0):
    """Run a worker with drain=True in a thread; fail the test if it does not drain in time."""
    errors = []

    def target():
        try:
            worker.run(drain=True)
        except BaseException as e:  # noqa: BLE001 - reported to the test
            errors.append(e)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        worker.stop()
        worker.stop()
        thread.join(10)
        pytest.fail(f"the worker did not drain within {timeout}s")
    if errors:
        raise errors[0]
