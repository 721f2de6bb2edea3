"""Enqueue runs on the caller's connection, inside the caller's transaction: the run exists if
and only if the transaction commits. Works on psycopg's sync and async connections alike
(`enqueue_async`, `enqueue_many_async`)."""

from __future__ import annotations

import datetime as dt
from typing import Any, Iterable, Optional, Sequence

from psycopg.types.json import Jsonb

from .durations import duration

_ENQUEUE = ("select conveyor.enqueue(%(task)s, %(payload)s, run_at => %(run_at)s, delay => %(delay)s,"
            " priority => %(priority)s, queue => %(queue)s, idempotency_key => %(key)s,"
            " parent_run_id => %(parent)s, key => %(ckey)s)::text")
_ENQUEUE_MANY = ("select id::text from conveyor.enqueue_many(%(task)s, %(payloads)s, run_at => %(run_at)s,"
                 " delay => %(delay)s, priority => %(priority)s, queue => %(queue)s,"
                 " idempotency_keys => %(keys)s, parent_run_id => %(parent)s, keys => %(ckeys)s) as e(id)")


def _args(task, run_at, delay, priority, queue, parent_run_id) -> dict:
    return {"task": task, "run_at": run_at, "delay": duration(delay) if delay is not None else None,
            "priority": priority, "queue": queue, "parent": parent_run_id}


def enqueue(conn, task: str, payload: Any = None, *, run_at: Optional[dt.datetime] = None, delay: Any = None,
            priority: Optional[int] = None, queue: Optional[str] = None, idempotency_key: Optional[str] = None,
            parent_run_id: Optional[str] = None, key: Optional[str] = None) -> str:
    """Enqueue one run of `task` on `conn` (in its current transaction; nothing is committed
    here). Returns the run id. With an idempotency key, enqueueing again returns the same run.
    `key` is the run's concurrency key (a tenant, an account): key_concurrency and
    key_rate_limit count per key, and the keys of a queue take turns."""
    args = _args(task, run_at, delay, priority, queue, parent_run_id)
    args.update(payload=Jsonb({} if payload is None else payload), key=idempotency_key, ckey=key)
    return conn.execute(_ENQUEUE, args).fetchone()[0]


def enqueue_many(conn, task: str, payloads: Iterable[Any], *, run_at: Optional[dt.datetime] = None,
                 delay: Any = None, priority: Optional[int] = None, queue: Optional[str] = None,
                 idempotency_keys: Optional[Sequence[str]] = None,
                 parent_run_id: Optional[str] = None, keys: Optional[Sequence[Optional[str]]] = None) -> list[str]:
    """Enqueue one run per payload in one statement; returns the run ids in payload order.
    `keys`: each run's concurrency key, aligned with the payloads."""
    args = _args(task, run_at, delay, priority, queue, parent_run_id)
    args.update(payloads=[Jsonb(p) for p in payloads],
                keys=list(idempotency_keys) if idempotency_keys is not None else None,
                ckeys=list(keys) if keys is not None else None)
    return [r[0] for r in conn.execute(_ENQUEUE_MANY, args).fetchall()]


async def enqueue_async(aconn, task: str, payload: Any = None, *, run_at: Optional[dt.datetime] = None,
                        delay: Any = None, priority: Optional[int] = None, queue: Optional[str] = None,
                        idempotency_key: Optional[str] = None, parent_run_id: Optional[str] = None,
                        key: Optional[str] = None) -> str:
    """`enqueue` on a psycopg AsyncConnection."""
    args = _args(task, run_at, delay, priority, queue, parent_run_id)
    args.update(payload=Jsonb({} if payload is None else payload), key=idempotency_key, ckey=key)
    cur = await aconn.execute(_ENQUEUE, args)
    return (await cur.fetchone())[0]


async def enqueue_many_async(aconn, task: str, payloads: Iterable[Any], *, run_at: Optional[dt.datetime] = None,
                             delay: Any = None, priority: Optional[int] = None, queue: Optional[str] = None,
                             idempotency_keys: Optional[Sequence[str]] = None,
                             parent_run_id: Optional[str] = None,
                             keys: Optional[Sequence[Optional[str]]] = None) -> list[str]:
    """`enqueue_many` on a psycopg AsyncConnection."""
    args = _args(task, run_at, delay, priority, queue, parent_run_id)
    args.update(payloads=[Jsonb(p) for p in payloads],
                keys=list(idempotency_keys) if idempotency_keys is not None else None,
                ckeys=list(keys) if keys is not None else None)
    cur = await aconn.execute(_ENQUEUE_MANY, args)
    return [r[0] for r in await cur.fetchall()]
