#!/usr/bin/env bash
# Outbound benchmark: sends/s from agentgate's durable outbox to a fast local fake Bot Connector, with Teams'
# rate limits off (`[outbound] throttle = false`) and on (the default). Self-contained; loopback only.
#
#   bash scripts/bench-outbound.sh [-n SENDS] [-k CONVERSATIONS] [-m off|on|both] [-r ROUNDS] [-c CONCURRENCY] [-s full|normal] [-p POLL_MS] [-x]
#     -n  sends per run (default 2000)                 -k  conversations they are spread over (default 100)
#     -m  throttle off, on, or both (default both)     -r  runs per mode, each with a fresh gateway and store (default 1)
#     -c  enqueues in flight (default 64)              -s  store.synchronous (default full)
#     -p  outbound.poll_interval_ms (default 50)       -x  skip the install/build step
#
# What is measured. Per run, a fresh gateway (`agentgate serve --dev --config FILE`, alone on CPU 1 when there are
# 2+ CPUs; --dev only so that the fake's http://127.0.0.1:PORT/_connector passes the Connector allow-list) with a
# bot that has a real client-secret `credential` (env:) and `token_authority` pointing at the fake's token
# endpoint, so the worker goes through the real token provider. Then:
#  1. K conversation references are created the way Teams creates them: one inbound (dev-mode) personal message
#     per conversation `bench-conv-0 … bench-conv-K-1`, serviceUrl = the fake Connector;
#  2. warm-up: one `agentgate send` CLI run, delivered -> the bot token is fetched once and cached (the fake must
#     see exactly 1 token request in the whole run: every measured send uses the cached token);
#  3. N sends are queued round-robin over the K conversations by `examples/bench_connector.rs enqueue`, which calls
#     the crate's own `Store::enqueue_outbound` (the call `agentgate send` makes: same outbox row, same `queued`
#     audit event in the hash chain) with up to -c calls in flight, into the running gateway's store. Launching
#     2,000 CLI processes would measure process start-up, and hand-written SQL could drift from the real rows; this
#     does neither. Queueing overlaps with delivery, as it would with live producers;
#  4. the run ends when /metrics counts N+1 delivered attempts (or fails on any dead/uncertain/retried attempt, or
#     after a time limit). The gateway is stopped by PID and the store is read with sqlite3 (read-only):
#     throughput = N / (last delivered − first queued), from the outbox rows' created_at_ms and updated_at_ms
#     (finish_outbound sets updated_at_ms to the time of the `delivered` audit event, in the same transaction);
#     latency = delivered − queued per send, nearest-rank p50/p99/max.
# Checks (the run fails otherwise): every send `delivered` in 1 attempt; the fake accepted exactly N+1 activities,
# refused none (bearer = the issued token), saw 1 token request; `agentgate audit --verify` intact with a queued and
# a delivered event per send. Reported, and flagged with a WARNING line when exceeded (not fatal: a real Connector
# would answer the excess with 429, which the worker retries): the most activities the fake saw in any sliding 1 s
# window, over all conversations (Teams allows 50/s per bot and tenant; all K conversations are one tenant) and in
# one conversation (Teams allows 7/s). K >= 8 conversations are needed for the tenant cap, not the 7/s
# per-conversation cap, to bind; the 60 per 30 s per-conversation window also binds when N/K > 60 (the default
# 2000/100 = 20 stays below it). The machine's 1-minute load average is recorded per run: other work skews the
# figures, so use -r 3 and read the medians.
# Output: a table on stdout; results.tsv, logs, the fake's stats and arrival times in
# target/bench-outbound/<UTC time>/ (git-ignored).
set -euo pipefail

SELF=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")
ROOT=$(cd "$(dirname "$SELF")/.." && pwd)
N=2000 K=100 MODES=both ROUNDS=1 CONC=64 SYNC=full POLL=50 BUILD=1 INSIDE=0 OUT=""
ARGS=("$@")
usage() { sed -n '5,9p' "$SELF" | sed 's/^# \{0,1\}//' >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    -n) N=$2; shift 2;; -k) K=$2; shift 2;; -m) MODES=$2; shift 2;; -r) ROUNDS=$2; shift 2;; -c) CONC=$2; shift 2;; -s) SYNC=$2; shift 2;;
    -p) POLL=$2; shift 2;; -x) BUILD=0; shift;; --inside) INSIDE=1; OUT=$2; shift 2;; -h|--help) usage;;
    *) echo "unknown option $1" >&2; usage;;
  esac
done
case "$MODES" in off) MODES="off";; on) MODES="on";; both) MODES="off on";; *) echo "-m must be off, on or both" >&2; exit 2;; esac
case "$SYNC" in full|normal) ;; *) echo "-s must be full or normal" >&2; exit 2;; esac
for v in "$N" "$K" "$ROUNDS" "$CONC" "$POLL"; do
  [[ "$v" =~ ^[1-9][0-9]*$ ]] || { echo "-n, -k, -r, -c and -p take whole numbers >= 1" >&2; exit 2; }
done
log() { printf '[bench-outbound %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }

# Configuration from the caller's environment must not leak into the measured gateway.
while IFS= read -r v; do unset "$v"; done < <(compgen -e | grep -E '^(AGENTGATE(_CONFIG$|__)|RUST_LOG$)' || true)

AG=$ROOT/target/release/agentgate
FIX=$ROOT/target/release/examples/bench_fixture
FAKE=$ROOT/target/release/examples/bench_connector

# ---------------------------------------------------------------- 1. install and build (outside the namespace)
if [ "$INSIDE" = 0 ]; then
  need=()
  command -v curl >/dev/null || need+=(curl)
  command -v sqlite3 >/dev/null || need+=(sqlite3)
  command -v taskset >/dev/null || need+=(util-linux)
  command -v ip >/dev/null || need+=(iproute2)
  if [ ${#need[@]} -gt 0 ]; then
    log "apt-get install ${need[*]}"
    sudo_=(); [ "$(id -u)" = 0 ] || sudo_=(sudo)
    "${sudo_[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo_[@]}" apt-get install -y -qq "${need[@]}" >/dev/null
  fi
  if [ "$BUILD" = 1 ]; then
    log "cargo build --release (agentgate, examples/bench_fixture, examples/bench_connector)"
    (cd "$ROOT" && cargo build --release -q --bin agentgate --example bench_fixture --example bench_connector)
  fi
  { [ -x "$AG" ] && [ -x "$FIX" ] && [ -x "$FAKE" ]; } || die "missing $AG, $FIX or $FAKE (run without -x)"
  OUT=$ROOT/target/bench-outbound/$(date -u +%Y%m%dT%H%M%SZ)
  mkdir -p "$OUT"
  # Bounded: each run waits at most N/40 + 90 s for delivery; the whole benchmark gets that + 60 s per run.
  limit=$(( (N / 40 + 150) * 2 * ROUNDS ))
  if unshare --net true 2>/dev/null; then
    log "re-running inside a loopback-only network namespace (time limit ${limit} s)"
    exec timeout --foreground -k 10 "$limit" unshare --net -- bash "$SELF" "${ARGS[@]}" --inside "$OUT"
  fi
  log "WARNING: unshare --net not permitted; running on the host loopback (all traffic is to 127.0.0.1 anyway)"
  exec timeout --foreground -k 10 "$limit" bash "$SELF" "${ARGS[@]}" --inside "$OUT"
fi
ip link set lo up 2>/dev/null || true

# ---------------------------------------------------------------- 2. per-run helpers
SCRATCH=$(mktemp -d /tmp/agentgate-bench-outbound.XXXXXX)
FIX_PID="" FAKE_PID="" SERVER_PID=""   # the only processes this script starts in the background
stop_pid() { # stop one process we started, by PID, and reap it
  local p=$1
  if kill -0 "$p" 2>/dev/null; then
    kill -TERM "$p" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$p" 2>/dev/null; then kill -KILL "$p" 2>/dev/null || true; fi
  fi
  wait "$p" 2>/dev/null || true
}
cleanup() {
  local p
  for p in "$SERVER_PID" "$FAKE_PID" "$FIX_PID"; do [ -n "$p" ] && stop_pid "$p"; done
  rm -rf "$SCRATCH"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ "$(nproc)" -ge 2 ]; then
  ON_CLIENT=(taskset -c 0) ON_SERVER=(taskset -c 1) PLACEMENT="gateway on CPU 1; fake Connector + enqueuer on CPU 0"
else
  ON_CLIENT=() ON_SERVER=() PLACEMENT="one CPU shared"
fi

FPORT=18191 CPORT=18190 GPORT=3990
APP_ID=b0000000-0000-4000-8000-0000000000b0
TENANT=70000000-0000-4000-8000-000000000070
SU=http://127.0.0.1:$CPORT/_connector
for p in "$FPORT" "$CPORT" "$GPORT"; do
  if curl -s -o /dev/null -m 1 "http://127.0.0.1:$p/"; then die "port $p is already in use"; fi
done
wait_http() { # wait_http URL STATUS: until URL answers STATUS; at most 30 s
  for _ in $(seq 1 300); do
    [ "$(curl -s -o /dev/null -m 1 -w '%{http_code}' "$1" || true)" = "$2" ] && return 0
    sleep 0.1
  done
  return 1
}
jnum() { sed -n "s/.*\"$2\":\([0-9][0-9]*\).*/\1/p" "$1"; }   # a number from a one-line JSON object
metric() { curl -s -m 5 "http://127.0.0.1:$GPORT/metrics" | awk -v k="agentgate_outbound_attempts_total{outcome=\"$1\"}" '$1 == k {print $2; exit}'; }

"${ON_CLIENT[@]}" "$FIX" serve --port "$FPORT" --key-file "$SCRATCH/key.pem" 2>"$OUT/fixture.log" &
FIX_PID=$!
wait_http "http://127.0.0.1:$FPORT/v1/keys" 200 || die "the OpenID fixture did not start"

printf 'throttle\tround\tloadavg\tsends\tconversations\tenqueue_per_s\tdelivered_per_s\tp50_ms\tp99_ms\tmax_ms\tconnector_max_1s_total\tconnector_max_1s_conversation\ttoken_requests\twall_s\n' >"$OUT/results.tsv"
log "outbound benchmark: $N sends over $K conversations, enqueue concurrency $CONC, store.synchronous=$SYNC, poll ${POLL} ms; $PLACEMENT"

run() { # run off|on ROUND
  local mode=$1 round=$2 tag=$1-r$2 throttle D CFG id st v fake_stats start_ms end_ms total delivered bad rows
  throttle=$([ "$mode" = on ] && echo true || echo false)
  D=$SCRATCH/$tag CFG=$SCRATCH/$tag/agentgate.toml
  mkdir -p "$D"
  cat >"$CFG" <<EOF
data_dir = "$D/data"

[server]
bind = "127.0.0.1:$GPORT"

[clouds.public]
openid_metadata_url = "http://127.0.0.1:$FPORT/v1/.well-known/openidconfiguration"
token_authority = "http://127.0.0.1:$CPORT"

[store]
synchronous = "$SYNC"

[log]
level = "warn"

[[bots]]
app_id = "$APP_ID"
display_name = "outbound bench bot"
allowed_tenants = ["$TENANT"]
tenant_id = "$TENANT"
credential = "env:AGENTGATE_BENCH_SECRET"

[outbound]
throttle = $throttle
poll_interval_ms = $POLL
EOF
  cp "$CFG" "$OUT/$tag.agentgate.toml"
  local load; load=$(cut -d' ' -f1 /proc/loadavg)   # other work on the machine skews the figures: recorded per run
  "${ON_CLIENT[@]}" "$FAKE" serve --port "$CPORT" 2>"$OUT/$tag.fake.log" &
  FAKE_PID=$!
  wait_http "http://127.0.0.1:$CPORT/stats" 200 || die "the fake Connector did not start"
  AGENTGATE_BENCH_SECRET=bench-client-secret "${ON_SERVER[@]}" "$AG" serve --dev --config "$CFG" >"$OUT/$tag.server.log" 2>&1 &
  SERVER_PID=$!
  wait_http "http://127.0.0.1:$GPORT/readyz" 200 || { tail -n 20 "$OUT/$tag.server.log" >&2; die "agentgate did not become ready"; }

  # 1. one conversation reference per conversation, from an inbound personal message
  local i ok=0
  for i in $(seq 0 $((K - 1))); do
    st=$(curl -s -o /dev/null -m 10 -w '%{http_code}' -H 'Content-Type: application/json' --data-binary @- \
      "http://127.0.0.1:$GPORT/api/messages" <<EOF || true
{"type":"message","id":"in-$i","channelId":"msteams","serviceUrl":"$SU","text":"hello","from":{"id":"29:bench-user-$i"},"recipient":{"id":"28:$APP_ID"},"conversation":{"id":"bench-conv-$i","conversationType":"personal","tenantId":"$TENANT"},"channelData":{"tenant":{"id":"$TENANT"}}}
EOF
)
    [ "$st" = 202 ] && ok=$((ok + 1))
  done
  [ "$ok" = "$K" ] || die "$mode: only $ok of $K inbound activities were accepted"

  # 2. warm-up through the CLI: fetches and caches the bot token
  id=$("$AG" send --config "$CFG" --conversation bench-conv-0 --text warm-up | sed -n 's/.*outbox #\([0-9]*\).*/\1/p')
  for _ in $(seq 1 100); do
    "$AG" outbox --config "$CFG" --id "$id" >"$D/warm.json"
    grep -qE '"state":"(delivered|dead|uncertain)"' "$D/warm.json" && break
    sleep 0.1
  done
  grep -q '"state":"delivered"' "$D/warm.json" || die "$mode: the warm-up send was not delivered: $(cat "$D/warm.json")"

  # 3. + 4. queue N sends, wait until all are delivered
  log "$mode: queueing $N sends over $K conversations"
  "${ON_CLIENT[@]}" "$FAKE" enqueue --config "$CFG" --count "$N" --conversations "$K" --concurrency "$CONC" >"$D/enqueue.json" ||
    die "$mode: enqueue failed"
  total=$((N + 1))
  local deadline=$(( $(date +%s) + N / 40 + 90 ))
  while :; do
    delivered=$(metric delivered); delivered=${delivered:-0}; bad=0
    for st in dead uncertain retried; do v=$(metric "$st"); bad=$((bad + ${v:-0})); done
    [ "$bad" = 0 ] || die "$mode: $bad attempt(s) dead/uncertain/retried (see $OUT/$tag.server.log)"
    [ "$delivered" -ge "$total" ] && break
    [ "$(date +%s)" -lt "$deadline" ] || die "$mode: only $delivered of $total delivered before the time limit"
    sleep 0.1
  done
  curl -s -m 5 "http://127.0.0.1:$CPORT/stats" >"$OUT/$tag.connector-stats.json"
  curl -s -m 5 "http://127.0.0.1:$CPORT/arrivals" >"$OUT/$tag.connector-arrivals.txt"
  stop_pid "$SERVER_PID"; SERVER_PID=""
  stop_pid "$FAKE_PID"; FAKE_PID=""

  # The books: outbox rows, audit chain, what the fake saw.
  local DB=$D/data/agentgate.db
  rows=$(sqlite3 -readonly "$DB" "SELECT count(*), sum(state = 'delivered' AND attempts = 1), min(created_at_ms), max(updated_at_ms) FROM outbox WHERE requested_by = 'bench'")
  sqlite3 -readonly "$DB" "SELECT updated_at_ms - created_at_ms FROM outbox WHERE requested_by = 'bench' ORDER BY 1" >"$D/latency.txt"
  local count ok1 first last
  IFS='|' read -r count ok1 first last <<<"$rows"
  { [ "$count" = "$N" ] && [ "$ok1" = "$N" ]; } || die "$mode: $ok1 of $count bench outbox rows delivered in one attempt (want $N)"
  "$AG" audit --verify --config "$CFG" >"$D/audit.txt" || die "$mode: agentgate audit --verify: $(cat "$D/audit.txt")"
  local events; events=$(sed -n 's/^audit chain intact: \([0-9]*\) events$/\1/p' "$D/audit.txt")
  [ "$events" = "$((2 * total))" ] || die "$mode: $events audit events, want $((2 * total)) (queued + delivered per send)"
  fake_stats=$OUT/$tag.connector-stats.json
  [ "$(jnum "$fake_stats" activities)" = "$total" ] || die "$mode: the fake Connector accepted $(jnum "$fake_stats" activities) activities, want $total"
  { [ "$(jnum "$fake_stats" unauthorized)" = 0 ] && [ "$(jnum "$fake_stats" bad_requests)" = 0 ]; } || die "$mode: the fake refused requests: $(cat "$fake_stats")"
  [ "$(jnum "$fake_stats" token_requests)" = 1 ] || die "$mode: $(jnum "$fake_stats" token_requests) token requests, want 1 (cached)"
  local max_total max_conv
  max_total=$(jnum "$fake_stats" max_per_1s_total) max_conv=$(jnum "$fake_stats" max_per_1s_conversation)
  if [ "$mode" = on ]; then
    # Teams counts at its end. The throttle reserves a slot before the request is made; what the Connector sees
    # can still bunch up. Reported, not fatal: a real Connector answers the excess with 429, which is retried.
    [ "$max_total" -le 50 ] || WARNINGS+=("throttle on: the fake Connector saw $max_total activities in one 1 s window (Teams allows 50/s per tenant); arrivals in $OUT/$tag.connector-arrivals.txt")
    [ "$max_conv" -le 7 ] || WARNINGS+=("throttle on: the fake Connector saw $max_conv activities to one conversation in one 1 s window (Teams allows 7)")
  fi
  start_ms=$(jnum "$D/enqueue.json" start_ms) end_ms=$(jnum "$D/enqueue.json" end_ms)
  awk -v mode="$mode" -v round="$round" -v la="$load" -v n="$N" -v k="$K" -v first="$first" -v last="$last" -v es="$start_ms" -v ee="$end_ms" \
      -v mt="$max_total" -v mc="$max_conv" -v tok="$(jnum "$fake_stats" token_requests)" '
    { lat[NR] = $1 }
    function rank(p,   r) { r = int(p * NR + 0.999999); if (r < 1) r = 1; return lat[r] }
    END { wall = (last - first) / 1000
          printf "%s\t%d\t%s\t%d\t%d\t%.0f\t%.1f\t%d\t%d\t%d\t%d\t%d\t%d\t%.2f\n", mode, round, la, n, k, n / ((ee - es > 0 ? ee - es : 1) / 1000),
            n / wall, rank(0.50), rank(0.99), lat[NR], mt, mc, tok, wall }' "$D/latency.txt" >>"$OUT/results.tsv"
  log "$tag: $(tail -n 1 "$OUT/results.tsv" | awk -F'\t' '{printf "%s delivered/s, p50 %s ms, p99 %s ms", $7, $8, $9}')"
}

WARNINGS=()
for mode in $MODES; do
  for round in $(seq 1 "$ROUNDS"); do run "$mode" "$round"; done
done

{
  echo
  echo "agentgate outbound: $N sends over $K conversations (one tenant), fake Connector on loopback, cached bot token,"
  echo "store.synchronous=$SYNC, poll ${POLL} ms, $PLACEMENT; latency = queued -> delivered (outbox rows)"
  echo
  awk -F'\t' 'NR == 1 { printf "%-9s %5s %7s %6s %6s %10s %12s %8s %8s %8s %15s %14s %6s\n", "throttle", "round", "load1", "sends", "convs", "enqueue/s", "delivered/s", "p50 ms", "p99 ms", "max ms", "fake max/1s all", "max/1s 1 conv", "tokens"; next }
              { printf "%-9s %5s %7s %6s %6s %10s %12s %8s %8s %8s %15s %14s %6s\n", $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13 }' "$OUT/results.tsv"
  if [ "$ROUNDS" -gt 1 ]; then
    awk -F'\t' 'NR > 1 { n[$1]++; v[$1, n[$1]] = $7 }
      END { for (m in n) { k = n[m]; for (i = 2; i <= k; i++) for (j = i; j > 1 && v[m, j-1] > v[m, j]; j--) { t = v[m, j]; v[m, j] = v[m, j-1]; v[m, j-1] = t }
                           printf "throttle %s: delivered/s median %.1f (min %.1f, max %.1f) over %d rounds\n", m, (k % 2 ? v[m, (k+1)/2] : (v[m, k/2] + v[m, k/2+1]) / 2), v[m, 1], v[m, k], k } }' "$OUT/results.tsv"
  fi
  echo
  echo "checked: every send delivered once, in one attempt; audit chain intact (queued + delivered per send); the fake"
  echo "accepted every bearer token and saw 1 token request per run (the cached token served every measured send)"
  for w in "${WARNINGS[@]}"; do echo "WARNING: $w"; done
} | tee "$OUT/summary.txt"
log "results in $OUT"
