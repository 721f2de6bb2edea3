#!/usr/bin/env bash
# Runs every peer workload once, one at a time, and prints the RESULT lines and a markdown table.
#   bench/peers/suite.sh [peer ...]        (default: all five peers)
# Environment: PGHOST/PGPORT/PGUSER as for run.sh; BENCH_PEERS_OUT (default
# bench/peers/results/peers-<UTC timestamp>.txt, git-ignored) receives the RESULT lines;
# JOBS_PROCESS, JOBS_SINGLE, JOBS_BATCH override the job counts (100000, 20000, 100000).
# A failed run is reported on stderr and the suite goes on; the exit status is 1 if any failed.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
peers=("$@")
[ ${#peers[@]} -gt 0 ] || peers=(pgboss graphile-worker procrastinate pgqueuer pgq)
out=${BENCH_PEERS_OUT:-$here/results/peers-$(date -u +%Y%m%dT%H%M%SZ).txt}
mkdir -p "$(dirname "$out")"
: >"$out"
jp=${JOBS_PROCESS:-100000} js=${JOBS_SINGLE:-20000} jb=${JOBS_BATCH:-100000}

failed=0
started=$(date +%s)
run() {
    local t0 line
    t0=$(date +%s)
    echo "== run.sh $*" >&2
    if line=$("$here/run.sh" "$@" | grep '^RESULT '); then
        echo "$line" | tee -a "$out"
        echo "   ($(($(date +%s) - t0)) s including setup and pre-enqueue; load average now: $(cut -d' ' -f1-3 /proc/loadavg))" >&2
    else
        echo "FAILED: run.sh $*" >&2
        failed=1
    fi
}

for peer in "${peers[@]}"; do
    run "$peer" enqueue_single --jobs "$js" --workers 8
    run "$peer" enqueue_batch --jobs "$jb" --workers 8 --batch 50
    run "$peer" process --jobs "$jp" --workers 8 --batch 1
    # Procrastinate fetches and finishes one job at a time: it has no batch knob.
    [ "$peer" = procrastinate ] || run "$peer" process --jobs "$jp" --workers 8 --batch 50
done

echo "suite: $(($(date +%s) - started)) s in all; RESULT lines in $out; load average: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
{
    echo
    echo "| peer | version | workload | jobs | workers | batch | knob | seconds | jobs/s |"
    echo "|---|---|---|---|---|---|---|---|---|"
    sed 's/^RESULT //' "$out" | while read -r fields; do
        declare -A f=()
        for kv in $fields; do f[${kv%%=*}]=${kv#*=}; done
        echo "| ${f[peer]} | ${f[version]} | ${f[workload]} | ${f[jobs]} | ${f[workers]} | ${f[batch]} | \`${f[knob]}\` | ${f[seconds]} | ${f[per_second]} |"
        unset f
    done
}
exit $failed
