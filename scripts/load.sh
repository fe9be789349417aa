#!/usr/bin/env bash
# Load test of agentgate's durable intake path, self-contained (needs nothing outside this repository).
#
#   bash scripts/load.sh [-d SECONDS] [-c CONNECTIONS] [-s full|normal] [-r ROUNDS] [-w WARMUP_S] [-n]
#     -d  measured wrk run per round (default 15)    -c  connections (default 32)
#     -s  store.synchronous (default full)           -r  rounds, a fresh server and data dir each (default 3)
#     -w  warm-up wrk run (default 5)                -n  skip the install/build step
#
# Every request is an AUTHENTICATED Teams message activity (RS256 Bot Framework token, validated against OpenID
# metadata + JWKS served on loopback by examples/bench_fixture.rs) with a UNIQUE activity id
# (benches/wrk-unique.lua), so every 2xx is a new activity committed to SQLite before the answer; re-posting one
# body would measure the deduplication path instead. The server runs `agentgate serve --dev --config FILE`: --dev
# only so that the activity's http://127.0.0.1:PORT/_connector serviceUrl passes the Connector allow-list; a
# request that carries a token is validated exactly as in production.
#
# What it does: (1) installs wrk/curl/taskset/ip via apt when missing and builds agentgate and the fixture
# (release); (2) re-runs itself in a fresh network namespace whose only interface is lo (unshare --net), when
# permitted, so nothing can leave the machine; (3) per round: start agentgate pinned to CPU 1 (wrk and the fixture
# on CPU 0, when there are 2+ CPUs), check good token -> 202 and wrong-aud token -> 401, warm up, measure with wrk,
# read peak RSS (VmHWM) and CPU time from /proc and the store's own counters from /metrics, stop it by PID.
# Output: one line per round and a summary on stdout; results.tsv, wrk output and server logs in
# target/load/<UTC time>-<sync>/ (git-ignored). The store's counters must show every accepted request committed
# (agentgate_store_committed_activities_total >= agentgate_requests_total{outcome="accepted"}, the difference being
# at most the requests in flight when wrk stopped) and no duplicate, or the run fails.
set -euo pipefail

SELF=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")
ROOT=$(cd "$(dirname "$SELF")/.." && pwd)
DUR=15 CONNS=32 SYNC=full ROUNDS=3 WARM=5 BUILD=1 INSIDE=0
ARGS=("$@")
usage() { sed -n '3,7p' "$SELF" | sed 's/^# \{0,1\}//' >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    -d) DUR=$2; shift 2;; -c) CONNS=$2; shift 2;; -s) SYNC=$2; shift 2;; -r) ROUNDS=$2; shift 2;; -w) WARM=$2; shift 2;;
    -n) BUILD=0; shift;; --inside) INSIDE=1; shift;; -h|--help) usage;;
    *) echo "unknown option $1" >&2; usage;;
  esac
done
case "$SYNC" in full|normal) ;; *) echo "-s must be full or normal" >&2; exit 2;; esac
for n in "$DUR" "$CONNS" "$ROUNDS" "$WARM"; do
  [[ "$n" =~ ^[0-9]+$ ]] || { echo "-d, -c, -r and -w take whole numbers" >&2; exit 2; }
done
log() { printf '[load %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }

# Configuration from the caller's environment must not leak into the measured server.
while IFS= read -r v; do unset "$v"; done < <(compgen -e | grep -E '^(AGENTGATE(_CONFIG$|__)|RUST_LOG$)' || true)

AG=$ROOT/target/release/agentgate
FIX=$ROOT/target/release/examples/bench_fixture
LUA=$ROOT/benches/wrk-unique.lua

# ---------------------------------------------------------------- 1. install and build (outside the namespace)
if [ "$INSIDE" = 0 ]; then
  need=()
  command -v wrk >/dev/null || need+=(wrk)
  command -v curl >/dev/null || need+=(curl)
  command -v taskset >/dev/null || need+=(util-linux)
  command -v ip >/dev/null || need+=(iproute2)
  if [ ${#need[@]} -gt 0 ]; then
    log "apt-get install ${need[*]}"
    sudo_=(); [ "$(id -u)" = 0 ] || sudo_=(sudo)
    "${sudo_[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo_[@]}" apt-get install -y -qq "${need[@]}" >/dev/null
  fi
  if [ "$BUILD" = 1 ]; then
    log "cargo build --release (agentgate, examples/bench_fixture)"
    (cd "$ROOT" && cargo build --release -q --bin agentgate --example bench_fixture)
  fi
  { [ -x "$AG" ] && [ -x "$FIX" ]; } || die "missing $AG or $FIX (run without -n)"
  if unshare --net true 2>/dev/null; then
    log "re-running inside a loopback-only network namespace"
    exec unshare --net -- bash "$SELF" --inside "${ARGS[@]}"
  fi
  log "WARNING: unshare --net not permitted; running on the host loopback (all traffic is to 127.0.0.1 anyway)"
else
  ip link set lo up
fi

# ---------------------------------------------------------------- 2. fixture, token, body
RUN_ID=$(date -u +%Y%m%dT%H%M%SZ)
OUT=$ROOT/target/load/$RUN_ID-$SYNC
SCRATCH=$(mktemp -d /tmp/agentgate-load.XXXXXX)
mkdir -p "$OUT"
FIXTURE_PID="" SERVER_PID=""   # the only processes this script starts in the background
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
  if [ -n "$SERVER_PID" ]; then stop_pid "$SERVER_PID"; fi
  if [ -n "$FIXTURE_PID" ]; then stop_pid "$FIXTURE_PID"; fi
  rm -rf "$SCRATCH"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# CPU placement: wrk and the fixture on CPU 0, the server alone on CPU 1 (as in ../shared/bench/run-anchors.sh).
if [ "$(nproc)" -ge 2 ]; then
  ON_CLIENT=(taskset -c 0) ON_SERVER=(taskset -c 1)
else
  log "WARNING: one CPU: wrk and the server share it; numbers are not comparable with pinned runs"
  ON_CLIENT=() ON_SERVER=()
fi

FPORT=18181 GPORT=3996
APP_ID=00000000-0000-0000-0000-00000000000011       # the Agents Playground's default bot, as in the anchor run
TENANT=11111111-2222-3333-4444-555555555555
SU=http://127.0.0.1:56150/_connector                # = the activity's serviceUrl = the token's serviceurl claim
META=http://127.0.0.1:$FPORT/v1/.well-known/openidconfiguration
URL=http://127.0.0.1:$GPORT/api/messages
for p in "$FPORT" "$GPORT"; do
  if curl -s -o /dev/null -m 1 "http://127.0.0.1:$p/"; then die "port $p is already in use"; fi
done

# The same Teams personal-chat message as ../shared/bench/activity.json (wrk-unique.lua rewrites its "id").
BODY=$SCRATCH/activity.json
cat >"$BODY" <<EOF
{"type":"message","id":"1732246046702","timestamp":"2026-11-22T04:07:26.702Z","localTimestamp":"2026-11-22T05:07:26.702+01:00","localTimezone":"Europe/Paris","serviceUrl":"$SU","channelId":"msteams","from":{"id":"29:1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d","name":"Alice Tester","aadObjectId":"aaaaaaaa-0000-0000-0000-000000000001"},"conversation":{"conversationType":"personal","tenantId":"$TENANT","id":"a:1nZ2Hm3rE4kT5yP6uQ7wX8cV9bN0mL1kJ2hG3fD4sA5pO6iU7yT8rE9wQ0aZ1xS2cD3vF4bG5nH6jM7kL8"},"recipient":{"id":"28:$APP_ID","name":"Rusty Bot"},"textFormat":"plain","locale":"en-US","text":"hello from the anchor benchmark","attachments":[],"entities":[{"type":"clientInfo","locale":"en-US","country":"US","platform":"Web","timezone":"Europe/Paris"}],"channelData":{"tenant":{"id":"$TENANT"}}}
EOF

wait_http() { # wait_http URL [STATUS]: until URL answers (with STATUS when given); at most 30 s
  local code
  for _ in $(seq 1 300); do
    code=$(curl -s -o /dev/null -m 1 -w '%{http_code}' "$1" || true)
    if [ -n "${2:-}" ]; then [ "$code" = "$2" ] && return 0; else [ "$code" != 000 ] && return 0; fi
    sleep 0.1
  done
  return 1
}
"${ON_CLIENT[@]}" "$FIX" serve --port "$FPORT" --key-file "$SCRATCH/key.pem" 2>"$OUT/fixture.log" &
FIXTURE_PID=$!
wait_http "http://127.0.0.1:$FPORT/v1/keys" 200 || { cat "$OUT/fixture.log" >&2; die "the fixture did not start"; }
GOOD=$("$FIX" mint --key-file "$SCRATCH/key.pem" --aud "$APP_ID" --serviceurl "$SU" --exp 7200)
BAD=$("$FIX" mint --key-file "$SCRATCH/key.pem" --aud wrong-app-id --serviceurl "$SU" --exp 7200)

post() { # post TOKEN -> HTTP status of one POST of the body
  curl -s -o "$SCRATCH/resp" -w '%{http_code}' -m 10 -H 'Content-Type: application/json' \
    -H "Authorization: Bearer $1" --data-binary @"$BODY" "$URL" || true
}
jget() { sed -n "s/.*\"$2\":\([^,}]*\).*/\1/p" "$1"; }            # a number from wrk-unique.lua's JSON line
metric() { awk -v k="$2" '$1 == k {print $2; exit}' "$1"; }     # one series from a /metrics snapshot
scrape() { curl -s -m 5 "http://127.0.0.1:$GPORT/metrics" >"$1" || die "GET /metrics failed"; }
status_kb() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
CLK=$(getconf CLK_TCK)

# ---------------------------------------------------------------- 3. rounds
printf 'round\tsync\trps\tp50_us\tp90_us\tp99_us\tmax_us\tnon2xx\tsock_err\twrk_2xx\tcommitted_in_run\tpeak_rss_kib\tserver_cpu_pct\taccepted_total\tcommitted_total\tduplicate_total\tcommits\tcommit_sum_s\n' \
  >"$OUT/results.tsv"
log "run $RUN_ID: $ROUNDS round(s) of ${DUR}s after ${WARM}s warm-up, $CONNS connections, store.synchronous=$SYNC"
for round in $(seq 1 "$ROUNDS"); do
  CFG=$SCRATCH/agentgate-r$round.toml
  cat >"$CFG" <<EOF
data_dir = "$SCRATCH/data-r$round"

[server]
bind = "127.0.0.1:$GPORT"

[clouds.public]
openid_metadata_url = "$META"

[log]
level = "warn"

[[bots]]
app_id = "$APP_ID"
display_name = "load test bot"
allowed_tenants = ["$TENANT"]
EOF
  AGENTGATE__STORE__SYNCHRONOUS=$SYNC "${ON_SERVER[@]}" "$AG" serve --dev --config "$CFG" >"$OUT/r$round.server.log" 2>&1 &
  SERVER_PID=$!
  wait_http "http://127.0.0.1:$GPORT/readyz" 200 || { cat "$OUT/r$round.server.log" >&2; die "agentgate did not become ready"; }

  good=$(post "$GOOD"); bad=$(post "$BAD")
  log "round $round: good token -> $good, wrong-aud token -> $bad"
  [ "$good" = 202 ] || die "good token gave $good, expected 202: $(head -c 300 "$SCRATCH/resp")"
  [ "$bad" = 401 ] || die "wrong-aud token gave $bad, expected 401"

  TOKEN=$GOOD BODY=$BODY ID_PREFIX=warm-r$round "${ON_CLIENT[@]}" timeout $((WARM + 30)) \
    wrk -t1 -c"$CONNS" -d"${WARM}s" -s "$LUA" "$URL" >"$OUT/r$round.warmup.txt" 2>&1 || die "warm-up wrk failed"
  sleep 0.5   # requests still in flight when wrk stopped finish their commit
  scrape "$SCRATCH/before.prom"
  t0=$(cpu_ticks "$SERVER_PID")
  TOKEN=$GOOD BODY=$BODY ID_PREFIX=run-r$round RESULT=$OUT/r$round.wrk.json "${ON_CLIENT[@]}" timeout $((DUR + 30)) \
    wrk -t1 -c"$CONNS" -d"${DUR}s" --latency -s "$LUA" "$URL" >"$OUT/r$round.wrk.txt" 2>&1 || die "wrk failed"
  t1=$(cpu_ticks "$SERVER_PID")
  sleep 0.5
  scrape "$SCRATCH/after.prom"
  peak=$(status_kb "$SERVER_PID" VmHWM)
  stop_pid "$SERVER_PID"; SERVER_PID=""
  cp "$SCRATCH/after.prom" "$OUT/r$round.metrics.prom"

  J=$OUT/r$round.wrk.json
  [ -s "$J" ] || die "wrk wrote no result (see $OUT/r$round.wrk.txt)"
  req=$(jget "$J" requests) non2xx=$(jget "$J" non2xx)
  sock=$(( $(jget "$J" err_connect) + $(jget "$J" err_read) + $(jget "$J" err_write) + $(jget "$J" err_timeout) ))
  A=$SCRATCH/after.prom B=$SCRATCH/before.prom
  acc=$(metric "$A" 'agentgate_requests_total{outcome="accepted"}')
  dup=$(metric "$A" 'agentgate_requests_total{outcome="duplicate"}')
  com=$(metric "$A" agentgate_store_committed_activities_total)
  com_run=$(( com - $(metric "$B" agentgate_store_committed_activities_total) ))
  commits=$(metric "$A" agentgate_store_commit_seconds_count)
  csum=$(metric "$A" agentgate_store_commit_seconds_sum)
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$SYNC" "$(jget "$J" rps)" \
    "$(jget "$J" p50_us)" "$(jget "$J" p90_us)" "$(jget "$J" p99_us)" "$(jget "$J" max_us)" "$non2xx" "$sock" \
    "$((req - non2xx))" "$com_run" "$peak" "$(( 100 * (t1 - t0) / CLK / DUR ))" "$acc" "$com" "$dup" "$commits" "$csum" \
    >>"$OUT/results.tsv"
  tail -1 "$OUT/results.tsv" | awk -F'\t' '{
    printf "round %s (synchronous=%s): %.0f req/s, p50 %.2f ms, p90 %.2f ms, p99 %.2f ms, max %.1f ms, non-2xx %s, socket errors %s, peak RSS %.1f MiB, server CPU %s%%\n",
      $1, $2, $3, $4/1000, $5/1000, $6/1000, $7/1000, $8, $9, $12/1024, $13
    printf "  store: %s committed / %s accepted (%s duplicate) in %s group commits (mean %.1f activities, %.2f ms each); measured run: %s 2xx, %s committed\n",
      $15, $14, $16, $17, ($17 > 0 ? $15/$17 : 0), ($17 > 0 ? 1000*$18/$17 : 0), $10, $11
    if ($15 > $14) printf "  (%d committed beyond accepted: requests in flight when wrk closed its connections, committed but never answered)\n", $15 - $14 }'
  # Every accepted (answered 2xx) activity must be committed. The reverse may differ a little: when wrk stops it
  # closes its connections with requests in flight; those commit, but their handler is dropped before it counts
  # them as accepted. So 0 <= committed - accepted <= connections x (warm-up + measured run).
  [ "$com" -ge "$acc" ] || die "committed ($com) < accepted ($acc): an acknowledged activity was not committed"
  [ "$((com - acc))" -le "$((2 * CONNS))" ] || die "committed ($com) exceeds accepted ($acc) by more than the requests in flight"
  [ "$dup" = 0 ] || die "$dup duplicate(s): the activity ids were not unique"
  [ "$((non2xx + sock))" = 0 ] || die "non-2xx $non2xx, socket errors $sock (see $OUT/r$round.server.log)"
  [ "$com_run" -ge "$((req - non2xx))" ] || die "fewer commits ($com_run) than 2xx answers ($((req - non2xx))) in the measured run"
done

# ---------------------------------------------------------------- 4. summary (medians over rounds)
awk -F'\t' -v conns="$CONNS" -v dur="$DUR" -v rounds="$ROUNDS" -v clients="$([ ${#ON_CLIENT[@]} -gt 0 ] && echo 'wrk on CPU 0, server on CPU 1' || echo 'unpinned')" '
  function med(a, n,   i, j, t) { for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j-1] > a[j]; j--) { t = a[j]; a[j] = a[j-1]; a[j-1] = t }
                                  return n % 2 ? a[(n+1)/2] : (a[n/2] + a[n/2+1]) / 2 }
  NR > 1 { n++; rps[n] = $3; p50[n] = $4; p99[n] = $6; if ($12 > peak) peak = $12; acc += $14; com += $15; sync = $2
           lo = (n == 1 || $3 < lo) ? $3 : lo; hi = ($3 > hi) ? $3 : hi }
  END { printf "agentgate load (store.synchronous=%s, %d conns, %d s x %d round(s), %s): %.0f req/s median (%.0f-%.0f), p50 %.2f ms, p99 %.2f ms, peak RSS %.1f MiB; committed %d >= accepted %d (every 2xx committed)\n",
          sync, conns, dur, rounds, clients, med(rps, n), lo, hi, med(p50, n)/1000, med(p99, n)/1000, peak/1024, com, acc }' \
  "$OUT/results.tsv" | tee "$OUT/summary.txt"
log "results in $OUT"
