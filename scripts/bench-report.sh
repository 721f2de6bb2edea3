#!/usr/bin/env bash
# bench-report.sh RESULTS [setting ...]: the markdown report of a `make bench` run.
set -euo pipefail
results=$1
shift
exec python3 - "$results" "$@" <<'PY'
import os, platform, statistics, subprocess, sys
from collections import defaultdict

path, settings = sys.argv[1], sys.argv[2:]
rows = []
for line in open(path):
    if not line.startswith("RESULT "):
        continue
    fields = dict(kv.split("=", 1) for kv in line.split()[1:])
    rows.append(fields)

def matching(system, workload, passes=False, **match):
    """A workload's rows in the order they ran: the first pass's (its rounds), or with passes
    the rows of the pass after the peers too."""
    return [r for r in rows
            if r.get("system") == system and r.get("workload") == workload and (passes or "pass" not in r)
            and all(r.get(k) == str(v) for k, v in match.items())]

def find(system, workload, passes=False, **match):
    """The row of a workload; of several (rounds, passes), the one with the median per_second
    (of an even number, the lower)."""
    found = matching(system, workload, passes, **match)
    if len(found) > 1 and all(num(r, "per_second") is not None for r in found):
        middle = statistics.median_low([num(r, "per_second") for r in found])
        return next(r for r in found if num(r, "per_second") == middle)
    return found[0] if found else None

def round_ratio(a, b):
    """The median of a / b over the rounds (the rows of each, paired in the order they ran):
    a round's two workloads ran minutes apart, two rounds' may not have."""
    ra, rb = [num(r, "per_second") for r in a], [num(r, "per_second") for r in b]
    rs = [x / y for x, y in zip(ra, rb) if x is not None and y]
    if not rs:
        return "–"
    note = f" (median of {len(rs)} rounds)" if len(rs) > 1 else ""
    return f"{statistics.median_low(rs):.2f}×{note}"

def num(r, key):
    try:
        return float(r[key]) if r and key in r else None
    except ValueError:
        return None

def fmt(x, unit=""):
    return "–" if x is None else (f"{x:,.0f}{unit}" if x >= 100 else f"{x:,.2f}{unit}")

mem = os.popen("free -g | awk '/Mem:/ {print $2}'").read().strip()
pg = subprocess.run(["/usr/bin/pg_config", "--version"], capture_output=True, text=True).stdout.strip()
print(f"Machine: {os.cpu_count()} cores, {mem} GiB memory, {platform.platform()}; {pg}.")
print("Cluster settings: " + ", ".join(f"`{s}`" for s in settings) + ".")
rounds = len([r for r in rows if r.get("system") == "pg_conveyor" and r.get("workload") == "process_keyed"])
if rounds > 1:
    print(f"pg_conveyor's batch-50 process workloads: the median of {rounds} interleaved rounds each.")
print()

single = num(find("pgbench", "limit_single"), "per_second")
batch = num(find("pgbench", "limit_batch"), "per_second")
p1 = find("pg_conveyor", "process", batch=1)
p50 = find("pg_conveyor", "process", batch=50)
print("| workload | pg_conveyor | reference | ratio |")
print("|---|---|---|---|")
es = num(find("pg_conveyor", "enqueue_single"), "per_second")
eb = num(find("pg_conveyor", "enqueue_batch"), "per_second")
print(f"| enqueue, one run per transaction (8 clients) | {fmt(es)} runs/s | | |")
print(f"| enqueue, batches of 50 (8 clients) | {fmt(eb)} runs/s | | |")
def ratio(a, b):
    return "–" if a is None or not b else f"{a / b:.2f}×"
r1 = num(p1, "per_second")
r50 = num(p50, "per_second")
print(f"| end to end, {p1['runs'] if p1 else '?'} no-op runs, 8 workers, claim batch 1 | {fmt(r1)} runs/s | pgbench limit (a): {fmt(single)} jobs/s | {ratio(r1, single)} of (a) |")
print(f"| end to end, {p50['runs'] if p50 else '?'} no-op runs, 8 workers, claim batch 50 | {fmt(r50)} runs/s | pgbench limit (b): {fmt(batch)} jobs/s | {ratio(r50, batch)} of (b) |")
for b in (1, 50):
    pc = find("pg_conveyor", "process_combined", batch=b)
    two = num(find("pg_conveyor", "process", batch=b), "per_second")
    if pc:
        print(f"| end to end, {pc['runs']} no-op runs, 8 workers, batch {b}, finish_and_claim (one call per cycle) | {fmt(num(pc, 'per_second'))} runs/s | claim + finish, two calls: {fmt(two)} runs/s | {round_ratio(matching('pg_conveyor', 'process_combined', batch=b), matching('pg_conveyor', 'process', batch=b))} |")
rl = find("pg_conveyor", "process_rate_limited", batch=50)
if rl:
    plain = num(find("pg_conveyor", "process", batch=50), "per_second")
    print(f"| end to end, {rl['runs']} no-op runs, 8 workers, batch 50, under rate limits on the queue and the task that never bind | {fmt(num(rl, 'per_second'))} runs/s | without limits: {fmt(plain)} runs/s (target ≥ 0.9×) | {round_ratio(matching('pg_conveyor', 'process_rate_limited', batch=50), matching('pg_conveyor', 'process', batch=50))} |")
kl = find("pg_conveyor", "process_key_limited", batch=50)
if kl:
    plain = num(find("pg_conveyor", "process", batch=50), "per_second")
    print(f"| end to end, {kl['runs']} no-op runs over 100 concurrency keys, 8 workers, batch 50, under a key_concurrency that never binds | {fmt(num(kl, 'per_second'))} runs/s | without limits: {fmt(plain)} runs/s (target ≥ 0.9×) | {round_ratio(matching('pg_conveyor', 'process_key_limited', batch=50), matching('pg_conveyor', 'process', batch=50))} |")
    kd = find("pg_conveyor", "process_keyed", batch=50)
    if kd:
        print(f"| the same keyed runs under no limit | {fmt(num(kd, 'per_second'))} runs/s | key-limited: {fmt(num(kl, 'per_second'))} runs/s | {round_ratio(matching('pg_conveyor', 'process_key_limited', batch=50), matching('pg_conveyor', 'process_keyed', batch=50))} (the limit alone) |")
mx = find("pg_conveyor", "process_mix", batch=50)
if mx:
    plain = num(find("pg_conveyor", "process", batch=50), "per_second")
    print(f"| end to end, {mx['runs']} runs, 8 workers, batch 50, a realistic mix: {int(mx['failed_once']):,} fail once and {int(mx['released_once']):,} are released once (retried and due again at once, through tick's delivery) | {fmt(num(mx, 'per_second'))} runs/s, {int(mx['attempts']):,} attempts | all succeeding at once: {fmt(plain)} runs/s | {ratio(num(mx, 'per_second'), plain)} |")
for f in [r for r in rows if r.get("workload") == "fairness"]:
    fifo = find("pg_conveyor", "fairness", mode="fifo")
    print(f"| fairness ({f['mode']}): {f['small']} runs of a small key behind {int(f['flood']):,} of a flooded one, 8 workers, batch {f['batch']} | the small key's last run started {f['small_waited_s']} s after the first start, after {int(f['flood_before']):,} flood runs | {fmt(num(f, 'per_second'))} runs/s | {ratio(num(f, 'per_second'), num(fifo, 'per_second'))} of fifo |")
top = find("pg_conveyor", "sustained", rate="1000000")
sus = [r for r in rows if r.get("system") == "pg_conveyor" and r.get("workload") == "sustained" and r.get("rate") != "1000000"]
held = next((r for r in sus if r.get("hold") == "1"), None)
# the run without a snapshot at the held run's rate (half the maximum), and any other rate (90%)
free = next((r for r in sus if r.get("hold") == "0" and held and r.get("rate") == held.get("rate")), None)
for r in sus:
    share = f" ({100 * num(r, 'rate') / num(top, 'per_second'):.0f}% of the maximum)" if top and num(top, "per_second") else ""
    label = "a REPEATABLE READ snapshot held all the while" if r.get("hold") == "1" else "no snapshot held"
    versus = ratio(num(r, 'per_second'), num(free, 'per_second')) if r is held and free else ""
    print(f"| sustained {r['rate']} runs/s offered{share} for {r['seconds']} s, {label} | {fmt(num(r, 'per_second'))} runs/s, start p50 {r['p50_ms']} ms / p99 {r['p99_ms']} ms | dead tuples: runs {int(r['dead_runs']):,}, events {int(r['dead_events']):,}; runs table {r['runs_mb']} MB | {versus} |")
lat = find("pg_conveyor", "latency")
if lat:
    print(f"| latency enqueue commit → claimed (LISTENing worker), {lat['samples']} samples | p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms | | |")
cc = sorted([r for r in rows if r.get("workload") == "claim_cost"], key=lambda r: int(r["waiting"]))
if len(cc) >= 2:
    a, b = cc[0], cc[-1]
    print(f"| claim + complete, {int(a['waiting']):,} vs {int(b['waiting']):,} runs waiting | {a['ms']} ms vs {b['ms']} ms | flat: ≤ 1.5× | {float(b['ms']) / float(a['ms']):.2f}× |")
tc = sorted([r for r in rows if r.get("workload") == "tick_cost"], key=lambda r: int(r["scheduled"]))
if len(tc) >= 2:
    a, b = tc[0], tc[-1]
    print(f"| tick delivering {a['due']} due runs, {int(a['scheduled']):,} vs {int(b['scheduled']):,} not yet due | {a['ms']} ms vs {b['ms']} ms | independent of the not-due | {float(b['ms']) / max(float(a['ms']), 0.001):.2f}× |")
ct = find("pg_conveyor", "counter_cost")
if ct:
    print(f"| monotonic counters (conveyor.counters): the delta row a batch-1 completion inserts, one connection | {ct['delta_us']} µs and {ct['delta_wal_bytes']} WAL bytes of a {ct['cycle_us']} µs, {ct['cycle_wal_bytes']}-byte claim + complete cycle; folding {ct['fold_us_per_delta']} µs per delta | no hot row: an insert, never an update | {ct['delta_share_pct']}% |")
sz = find("pg_conveyor", "size")
if sz:
    print(f"| {int(sz['runs']):,} runs processed and kept (retention 7d), autovacuum on | runs table {sz['table_mb']} MB + indexes {sz['index_mb']} MB, {int(sz['dead']):,} dead tuples | events {sz['events_mb']} MB, attempts {sz['attempts_mb']} MB | |")
gr = find("pg_conveyor", "growth")
if gr:
    first, second = int(gr.get('first_half_peak_mb', 0)), int(gr['second_half_peak_mb'])
    change = f"{(second - first) * 100 / first:+.0f}% from the first half to the second" if first else ""
    print(f"| sustained load, {int(gr['runs']):,} runs, retention 10s | runs table + indexes: peak {first} MB in the first half, {second} MB in the second | no unbounded growth | {change} |")
wal_rows = [r for r in rows if r.get("system") == "pg_conveyor" and r.get("wal_per_run") and "pass" not in r]
if wal_rows:
    print()
    print("WAL bytes and commits per run (enqueue to finish, the workload's setup included; from pg_current_wal_lsn and pg_stat_database.xact_commit before and after, the background worker's ticks too):")
    print()
    print("| workload | runs | WAL bytes per run | commits per run |")
    print("|---|---|---|---|")
    shown = set()
    for r in wal_rows:
        label = r["workload"] + "".join(f", {k} {r[k]}" for k in ("batch", "clients", "hold") if k in r)
        if label in shown:
            continue  # (a workload of several rounds: its first round)
        shown.add(label)
        print(f"| {label} | {int(r['runs']):,} | {int(r['wal_per_run']):,} | {r['commits_per_run']} |")
routed = [r for r in rows if r.get("system") == "pg_conveyor" and r.get("workload") == "routed"]
if routed:
    print()
    print("Scale-out (docs/scale-out.md): the same no-op runs, 8 workers, on one shard directly, through the router with one shard, and through the router with two shards. All three clusters share this machine's cores, so a second shard adds no cores here; the CPU time per run (the servers' processes, from /proc) says what a shard and the router each spend:")
    print()
    print("| batch | via | shards | runs | runs/s | vs direct | shards' CPU per run | router's CPU per run |")
    print("|---|---|---|---|---|---|---|---|")
    for r in routed:
        base = next((num(d, "per_second") for d in routed if d["via"] == "direct" and d["batch"] == r["batch"]), None)
        print(f"| {r['batch']} | {r['via']} | {r['shards']} | {int(r['runs']):,} | {fmt(num(r, 'per_second'))} | {ratio(num(r, 'per_second'), base)} | {r['shard_cpu_us_per_run']} µs | {r['router_cpu_us_per_run']} µs |")
print()
print("Targets (printed, not enforced): end to end with batched claims ≥ 10,000 runs/s and ≥ 2× every per-job peer.")
print()

peers = defaultdict(dict)
for r in rows:
    if r.get("system") not in ("pg_conveyor", "pgbench"):
        key = r["workload"] if r["workload"] != "process" else f"process_batch{r.get('batch', '1')}"
        peers[r["system"]][key] = r
if peers:
    def samples(workload, **match):
        return ", ".join(fmt(num(r, "per_second")) for r in matching("pg_conveyor", workload, passes=True, **match))
    print("pg_conveyor's samples in the order they ran (this table takes the median of all of them, of an even number the lower; the peers ran between "
          f"the first pass and the last): enqueue single {samples('enqueue_single')}; enqueue batch "
          f"{samples('enqueue_batch')}; process batch 1 {samples('process', batch=1)}; process batch 50 "
          f"{samples('process', batch=50)}.")
    print()
    both = lambda workload, **m: num(find("pg_conveyor", workload, passes=True, **m), "per_second")
    ours = {"enqueue_single": both("enqueue_single"), "enqueue_batch": both("enqueue_batch"),
            "process_batch1": both("process", batch=1), "process_batch50": both("process", batch=50)}
    print("| system | enqueue single (jobs/s) | enqueue batch (jobs/s) | process, batch 1 (jobs/s) | process, batch 50 (jobs/s) |")
    print("|---|---|---|---|---|")
    print("| pg_conveyor | " + " | ".join(fmt(ours[k]) for k in ("enqueue_single", "enqueue_batch", "process_batch1", "process_batch50")) + " |")
    for name, w in sorted(peers.items()):
        cells = []
        for key in ("enqueue_single", "enqueue_batch", "process_batch1", "process_batch50"):
            v = num(w.get(key), "per_second")
            o = ours[key]
            cells.append("–" if v is None else f"{fmt(v)} (pg_conveyor {o / v:.1f}×)" if o and v else fmt(v))
        note = next((w[k].get("note") for k in w if w[k].get("note")), None)
        version = next((w[k].get("version") for k in w if w[k].get("version")), None)
        label = name + (f" {version}" if version else "") + (f" ({note.replace('_', ' ')})" if note else "")
        print(f"| {label} | " + " | ".join(cells) + " |")
    held_rows = [r for r in rows if r.get("workload") == "sustained" and r.get("system") not in ("pg_conveyor", "pgbench")]
    if held_rows:
        print()
        print("Held snapshot, the peers that can run it: the same offered rate as pg_conveyor's, without and with a REPEATABLE READ snapshot held all the while (processed jobs/s, enqueue → start, dead tuples at the end: pg_conveyor's `runs`, the peers' tables together):")
        print()
        print("| system | snapshot | offered | processed | vs without | start p50 / p99 | dead tuples |")
        print("|---|---|---|---|---|---|---|")
        peers_held = sorted(held_rows, key=lambda x: (x.get("system"), x.get("hold")))
        for r in [x for x in sus if x.get("rate") == held_rows[0].get("rate")] + peers_held:
            free_r = find(r["system"], "sustained", hold=0, rate=r["rate"])
            dead_cell = r.get("dead_total") or r.get("dead_runs")
            print(f"| {r['system']} | {'held' if r.get('hold') == '1' else 'none'} | {r['rate']}/s for {r['seconds']} s | {fmt(num(r, 'per_second'))} | {ratio(num(r, 'per_second'), num(free_r, 'per_second')) if r.get('hold') == '1' else ''} | {r['p50_ms']} / {r['p99_ms']} ms | {int(dead_cell or 0):,} |")
    print()
    print("Peers' knobs (what made their batches and concurrency):")
    for name, w in sorted(peers.items()):
        for key in ("process_batch1", "process_batch50"):
            if key in w and w[key].get("knob"):
                print(f"- {name}, {key.replace('_', ' ')}: `{w[key]['knob']}`")
PY
