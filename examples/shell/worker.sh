#!/usr/bin/env bash
# A pg_conveyor worker in plain shell: one psql connection is its only client.
#
#   worker.sh QUEUES [HANDLER_DIR] [--drain]       (HANDLER_DIR defaults to handlers/ beside it)
#
# Connects with the usual PG* variables. LISTENs on each queue's channel (conveyor.<queue>),
# claims runs from QUEUES (comma-separated) in batches and runs HANDLER_DIR/<task> for each,
# with the payload on stdin and CONVEYOR_RUN_ID, CONVEYOR_TASK, CONVEYOR_ATTEMPT set:
#   exit 0    complete (sent with the next claim, conveyor.finish_and_claim); the result is
#             {"output": <the handler's stdout>, "heartbeats": N}
#   exit 75   release (business waiting): stdout is the delay, e.g. 30s
#   exit 65   fail, not retryable
#   other     fail, retryable; the last line of stderr is the message
# While a handler runs the worker heartbeats; when the run is cancelled it stops the handler.
# SIGINT/SIGTERM: a running handler gets CONVEYOR_GRACE seconds (default 10) to finish, else it
# is stopped and its run given back (return_run); the rest of the batch is given back too.
# --drain: exit once the queues are empty instead of waiting for more.
set -u

QUEUES=${1:?usage: worker.sh QUEUES [HANDLER_DIR] [--drain]}
shift
HANDLERS=$(dirname "$0")/handlers
DRAIN=
for arg in "$@"; do
    if [ "$arg" = --drain ]; then DRAIN=--drain; else HANDLERS=$arg; fi
done
WORKER="shell:$(hostname):$$"
BATCH=${CONVEYOR_BATCH:-10}
LEASE=${CONVEYOR_LEASE:-30s}
HEARTBEAT_EVERY=${CONVEYOR_HEARTBEAT_SECONDS:-5}
POLL_SECONDS=${CONVEYOR_POLL_SECONDS:-5}
GRACE=${CONVEYOR_GRACE:-10}
# CONVEYOR_POOLED=1: the connection goes through a transaction pooler (PgBouncer): no LISTEN,
# which needs a session of its own; the worker polls every CONVEYOR_POLL_SECONDS
POOLED=${CONVEYOR_POOLED:-}

stopping=0
trap 'stopping=1' INT TERM

log() { printf '%s [%s] %s\n' "$(date +%H:%M:%S)" "$WORKER" "$*" >&2; }

coproc PSQL { exec psql -X -q -At -F $'\t' -v ON_ERROR_STOP=0 2>&1; }
WOKEN=0

# sql STATEMENT: run one statement on the worker's connection; print its rows (tab-separated).
# Notifications that arrive are noted in WOKEN. On an error the error is logged, nothing is
# printed and the status is 1.
sql() {
    printf '%s;\n\\echo __conveyor_end__\n' "$1" >&"${PSQL[1]}"
    local line failed=0 rows=()
    while IFS= read -r line <&"${PSQL[0]}"; do
        case "$line" in
            __conveyor_end__)
                [ "$failed" = 0 ] && [ ${#rows[@]} -gt 0 ] && printf '%s\n' "${rows[@]}"
                return "$failed" ;;
            'Asynchronous notification'*) WOKEN=1 ;;
            ERROR:*|FATAL:*|psql:*ERROR:*) log "$line"; failed=1 ;;
            *) [ "$failed" = 0 ] && rows+=("$line") ;;
        esac
    done
    log "lost the database connection"
    exit 1
}

# b64 TEXT: a SQL expression for TEXT, whatever it contains.
b64() { printf "convert_from(decode('%s', 'base64'), 'UTF8')" "$(printf '%s' "$1" | base64 -w0)"; }

# The last success of a batch is not completed on its own: it goes with the next claim, in one
# conveyor.finish_and_claim call (one transaction per cycle). Earlier ones are flushed
# (finish_runs) before the next run of the batch starts, since heartbeats extend only the run
# they are for, and whatever is left when the worker stops.
PENDING=() # finish_runs items (SQL jsonb expressions) of successes not sent yet
items_sql() {
    if [ ${#PENDING[@]} -eq 0 ]; then echo null; else (IFS=,; echo "jsonb_build_array(${PENDING[*]})"); fi
}
report_finished() { # report_finished ID STATUS (empty: stale lease)
    if [ -n "$2" ]; then log "run $1 -> $2"; else log "run $1: stale lease, moving on (its success was not recorded)"; fi
}
flush() {
    [ ${#PENDING[@]} -eq 0 ] && return
    local rows id status
    rows=$(sql "select run_id, coalesce(status::text, '') from conveyor.finish_runs($(items_sql))") || return
    PENDING=()
    while IFS=$'\t' read -r id status; do
        [ -n "$id" ] && report_finished "$id" "$status"
    done <<<"$rows"
}

finish() { # finish ID TOKEN SQL-CALL
    local status
    status=$(sql "select $3")
    [ -n "$status" ] && log "run $1 -> $status"
}

run_one() {
    local id=$1 token=$2 task=$3 attempt=$4 payload=$5
    local handler="$HANDLERS/$task" out err pid code cancelled=0 beat=$SECONDS beats=0
    if [ ! -x "$handler" ]; then
        finish "$id" "$token" "conveyor.fail_run('$id', '$token', $(b64 "no handler $handler for task $task"), retryable => false)"
        return
    fi
    out=$(mktemp) err=$(mktemp)
    printf '%s' "$payload" | base64 -d | CONVEYOR_RUN_ID=$id CONVEYOR_TASK=$task CONVEYOR_ATTEMPT=$attempt \
        "$handler" >"$out" 2>"$err" &
    pid=$!
    local grace_until=
    while kill -0 "$pid" 2>/dev/null; do
        sleep 0.1
        if [ "$stopping" = 1 ] && [ -z "$grace_until" ]; then grace_until=$((SECONDS + GRACE)); fi
        if [ -n "$grace_until" ] && [ "$SECONDS" -ge "$grace_until" ]; then
            kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
            finish "$id" "$token" "conveyor.return_run('$id', '$token')"
            rm -f "$out" "$err"; return
        fi
        if [ $((SECONDS - beat)) -ge "$HEARTBEAT_EVERY" ]; then
            beat=$SECONDS
            beats=$((beats + 1))
            if [ "$(sql "select conveyor.heartbeat('$id', '$token', '$LEASE')")" = t ]; then
                log "run $id was cancelled: stopping its handler"
                cancelled=1; kill "$pid" 2>/dev/null
            fi
        fi
    done
    wait "$pid"; code=$?
    local message; message=$(tail -n 1 "$err")
    if [ "$cancelled" = 1 ]; then
        finish "$id" "$token" "conveyor.fail_run('$id', '$token', 'stopped: cancelled while running')"
    elif [ "$code" = 0 ]; then
        PENDING+=("jsonb_build_object('run_id', '$id', 'lease_token', '$token', 'outcome', 'succeeded', 'result', jsonb_build_object('output', $(b64 "$(cat "$out")"), 'heartbeats', $beats))")
    elif [ "$code" = 75 ]; then
        finish "$id" "$token" "conveyor.release_run('$id', '$token', $(b64 "$(head -n 1 "$out")"), $(b64 "$message"))"
    else
        finish "$id" "$token" "conveyor.fail_run('$id', '$token', $(b64 "${message:-exit code $code}"), jsonb_build_object('exit_code', $code), retryable => $([ "$code" = 65 ] && echo false || echo true))"
    fi
    rm -f "$out" "$err"
}

IFS=',' read -r -a queue_list <<<"$QUEUES"
for q in "${queue_list[@]}"; do
    q=$(echo "$q" | tr -d ' ')
    if [ -z "$POOLED" ] || [ "$POOLED" = 0 ]; then
        sql "listen \"conveyor.$q\"" >/dev/null
    fi
done
log "claiming from $QUEUES (batch $BATCH, lease $LEASE)"

while [ "$stopping" = 0 ]; do
    WOKEN=0
    rows=()
    # the held-back successes are forgotten only once the call went through (else sent again)
    if out=$(sql "select kind, run_id, coalesce(status::text, ''), lease_token, task, attempt,
                         replace(encode(convert_to(payload::text, 'UTF8'), 'base64'), E'\n', '')
                  from conveyor.finish_and_claim($(items_sql), $(b64 "$QUEUES"), $(b64 "$WORKER"), $BATCH, $(b64 "$LEASE"))"); then
        PENDING=()
        [ -n "$out" ] && mapfile -t rows <<<"$out"
    fi
    runs=()
    for row in "${rows[@]}"; do
        IFS=$'\t' read -r kind id status token task attempt payload <<<"$row"
        if [ "$kind" = finished ]; then
            report_finished "$id" "$status"
        else
            runs+=("$id"$'\t'"$token"$'\t'"$task"$'\t'"$attempt"$'\t'"$payload")
        fi
    done
    if [ ${#runs[@]} -eq 0 ]; then
        if [ "$DRAIN" = --drain ]; then
            [ "$(sql "select conveyor.pending($(b64 "$QUEUES"))")" = 0 ] && break
        fi
        # wait for a wakeup (a notification shows after any statement), or poll after POLL_SECONDS
        for _ in $(seq $((POLL_SECONDS * 4))); do
            [ "$stopping" = 1 ] || [ "$WOKEN" = 1 ] && break
            sql "select pg_sleep(0.25)" >/dev/null
        done
        continue
    fi
    for row in "${runs[@]}"; do
        IFS=$'\t' read -r id token task attempt payload <<<"$row"
        if [ ${#PENDING[@]} -gt 0 ]; then
            # a success held back behind another run could outlive its lease (heartbeats extend
            # only the run they are for): only the batch's last success waits for the next claim
            flush
        fi
        if [ "$stopping" = 1 ]; then
            finish "$id" "$token" "conveyor.return_run('$id', '$token')"
        else
            run_one "$id" "$token" "$task" "$attempt" "$payload"
        fi
    done
done
flush
log "stopped"
