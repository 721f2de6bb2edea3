#!/usr/bin/env node
// A read-only web dashboard for pg_conveyor.
//
//   node server.mjs [--port N] [--host ADDR]        (or DASHBOARD_PORT / DASHBOARD_HOST)
//
// Connects with the usual libpq environment variables (PGHOST, PGPORT, PGUSER, PGPASSWORD,
// PGDATABASE); a login role that is only a member of conveyor_reader is enough. Every session
// is read-only (default_transaction_read_only = on) and reads nothing but the dashboard views
// conveyor.queue_stats, conveyor.task_stats, conveyor.recent_failures, conveyor.throughput and
// the function conveyor.metrics().
//
//   GET /                 the page (index.html beside this file)
//   GET /api/dashboard    one consistent snapshot of the four views as JSON; the newest 50
//                         failures (?failures=N, at most 500), of one queue with ?queue=NAME
//   GET /metrics          conveyor.metrics(): Prometheus text format
//   GET /healthz          "ok" when the database answers
//
// Port 0 picks a free port; the address actually bound is printed on stdout:
//   conveyor dashboard listening on http://127.0.0.1:PORT/
import http from 'node:http';
import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import pg from 'pg';

const here = path.dirname(fileURLToPath(import.meta.url));

function argValue(name) {
    const i = process.argv.indexOf(name);
    return i > 0 ? process.argv[i + 1] : undefined;
}
const port = Number(argValue('--port') ?? process.env.DASHBOARD_PORT ?? 8088);
const host = argValue('--host') ?? process.env.DASHBOARD_HOST ?? '127.0.0.1';
if (!Number.isInteger(port) || port < 0 || port > 65535) {
    console.error(`invalid port: ${port}`);
    process.exit(2);
}

// Counts are bigint and rates numeric: small enough for a JavaScript number on a dashboard.
pg.types.setTypeParser(pg.types.builtins.INT8, (v) => Number(v));
pg.types.setTypeParser(pg.types.builtins.NUMERIC, (v) => Number(v));
// Intervals (retry_in) as PostgreSQL prints them, e.g. "00:10:00".
pg.types.setTypeParser(pg.types.builtins.INTERVAL, (v) => v);

const pool = new pg.Pool({
    max: 4,
    idleTimeoutMillis: 30_000,
    connectionTimeoutMillis: 5_000,
    application_name: 'conveyor dashboard',
    options: '-c default_transaction_read_only=on -c statement_timeout=10000',
});
pool.on('error', (err) => console.error(`idle connection error: ${err.message}`));

async function snapshot(failureLimit, queue) {
    const client = await pool.connect();
    try {
        // one snapshot for the four views, so the tables agree with each other
        await client.query('begin isolation level repeatable read read only');
        const meta = await client.query(
            'select now() as now, current_database() as database, current_user as "user"');
        const queues = await client.query('select * from conveyor.queue_stats order by queue');
        const tasks = await client.query('select * from conveyor.task_stats order by queue, task');
        const failures = await client.query(
            `select * from conveyor.recent_failures where $2::text is null or queue = $2
             order by finished_at desc limit $1`, [failureLimit, queue]);
        const failuresTotal = await client.query(
            'select count(*) as n from conveyor.recent_failures where $1::text is null or queue = $1', [queue]);
        const throughput = await client.query('select * from conveyor.throughput order by minute, queue');
        await client.query('commit');
        return {
            ...meta.rows[0],
            queues: queues.rows,
            tasks: tasks.rows,
            failures: failures.rows,
            failures_total: failuresTotal.rows[0].n,
            throughput: throughput.rows,
        };
    } catch (err) {
        await client.query('rollback').catch(() => {});
        throw err;
    } finally {
        client.release();
    }
}

const securityHeaders = {
    'Cache-Control': 'no-store',
    'X-Content-Type-Options': 'nosniff',
    'Referrer-Policy': 'no-referrer',
    'Content-Security-Policy':
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; " +
        "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'",
};

function send(res, status, type, body) {
    res.writeHead(status, { ...securityHeaders, 'Content-Type': type });
    res.end(body);
}
const sendJson = (res, status, value) => send(res, status, 'application/json; charset=utf-8', JSON.stringify(value));

async function handle(req, res) {
    const url = new URL(req.url, 'http://dashboard.invalid');
    if (req.method !== 'GET' && req.method !== 'HEAD') {
        res.setHeader('Allow', 'GET, HEAD');
        return sendJson(res, 405, { error: 'read-only dashboard: GET only' });
    }
    switch (url.pathname) {
    case '/':
    case '/index.html':
        return send(res, 200, 'text/html; charset=utf-8', await readFile(path.join(here, 'index.html')));
    case '/api/dashboard': {
        const n = Number(url.searchParams.get('failures') ?? 50);
        const limit = Number.isInteger(n) ? Math.min(Math.max(n, 0), 500) : 50;
        return sendJson(res, 200, await snapshot(limit, url.searchParams.get('queue') || null));
    }
    case '/metrics': {
        const { rows } = await pool.query('select conveyor.metrics() as m');
        return send(res, 200, 'text/plain; version=0.0.4; charset=utf-8', rows[0].m ?? '');
    }
    case '/healthz':
        await pool.query('select 1');
        return send(res, 200, 'text/plain; charset=utf-8', 'ok\n');
    default:
        return sendJson(res, 404, { error: 'not found' });
    }
}

const server = http.createServer((req, res) => {
    handle(req, res).catch((err) => {
        console.error(`${req.method} ${req.url}: ${err.message}`);
        if (!res.headersSent) sendJson(res, 503, { error: err.message, code: err.code });
        else res.end();
    });
});

server.listen(port, host, () => {
    const a = server.address();
    const shown = a.family === 'IPv6' ? `[${a.address}]` : a.address;
    console.log(`conveyor dashboard listening on http://${shown}:${a.port}/`);
});

function shutdown() {
    server.close();
    server.closeAllConnections?.();
    pool.end().finally(() => process.exit(0));
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
