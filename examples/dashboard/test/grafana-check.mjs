// Checks examples/dashboard/grafana/pg_conveyor.json against a live /metrics and Prometheus:
// every query (the panels' and the template variables') names only metric families that
// /metrics exposes, and Prometheus evaluates each one without error (template variables
// substituted as Grafana would). Prints one "ok"/"FAIL" line per check.
//   METRICS_URL=http://127.0.0.1:8088/metrics PROMETHEUS_URL=http://127.0.0.1:9090 node test/grafana-check.mjs
import { readFile } from 'node:fs/promises';

const dashboard = JSON.parse(await readFile(new URL('../grafana/pg_conveyor.json', import.meta.url), 'utf8'));
const metrics = await (await fetch(process.env.METRICS_URL)).text();
const families = new Set([...metrics.matchAll(/^# TYPE (\S+) \S+$/gm)].map((m) => m[1]));

const queries = [];
for (const panel of dashboard.panels) for (const t of panel.targets ?? []) queries.push([panel.title, t.expr]);
for (const v of dashboard.templating.list) {
  if (v.type === 'query') queries.push([`variable ${v.name}`, v.query.query ?? v.query]);
}

let failed = 0;
const check = (ok, what) => { console.log(`${ok ? 'ok' : 'FAIL'} ${what}`); if (!ok) failed += 1; };
check(queries.length >= 10, `the dashboard has ${queries.length} queries`);
for (const [where, expr] of queries) {
  const names = [...new Set(expr.match(/\bconveyor_[a-z0-9_]+/g) ?? [])];
  check(names.length > 0, `${where}: names a pg_conveyor metric`);
  for (const name of names) check(families.has(name), `${where}: ${name} is a family of /metrics`);
  // as Grafana sends it: all queues, the rate interval of a 1 s scrape
  const label = expr.match(/^label_values\((\w+), (\w+)\)$/);
  const promql = label ? `group by (${label[2]}) (${label[1]})` : expr.replaceAll('$queue', '.*').replaceAll('$__rate_interval', '1m');
  const r = await fetch(`${process.env.PROMETHEUS_URL}/api/v1/query?query=${encodeURIComponent(promql)}`);
  const body = await r.json();
  check(r.ok && body.status === 'success', `${where}: Prometheus evaluates it (${body.error ?? `${body.data?.result?.length} series`})`);
}
process.exit(failed ? 1 : 0);
