#!/usr/bin/env bash
# Load test of agentgate's durable intake path, self-contained (needs nothing outside this repository, except a
# Postgres server for -b postgres).
#
#   bash scripts/load.sh [-d SECONDS] [-c CONNECTIONS] [-s full|normal] [-r ROUNDS] [-w WARMUP_S] [-n]
#                        [-b sqlite|postgres[,...]] [-R REPLICAS[,...]] [-P POSTGRES_URL]
#     -d  measured wrk run per round (default 15)    -c  connections, split over the replicas (default 32)
#     -s  store.synchronous, SQLite (default full)   -r  rounds, a fresh server, data dir/database each (default 3)
#     -w  warm-up wrk run (default 5)                -n  skip the install/build step
#     -b  store backend(s) (default sqlite)          -R  replicas (default 1; more than 1 only on postgres)
#     -P  Postgres server, no database name (default postgres://postgres@127.0.0.1:5432; a fresh database is
#         created per round and dropped after)
#   SQLite vs Postgres with 1 and 2 replicas, in one command:  bash scripts/load.sh -b sqlite,postgres -R 1,2
#   (every combination is run, except SQLite with more than one replica: SQLite replicas share nothing)
#
# Every request is an AUTHENTICATED Teams message activity (RS256 Bot Framework token, validated against OpenID
# metadata + JWKS served on loopback by examples/bench_fixture.rs) with a UNIQUE activity id
# (benches/wrk-unique.lua), so every 2xx is a new activity committed to the store before the answer; re-posting one
# body would measure the deduplication path instead. The server runs `agentgate serve --dev --config FILE`: --dev
# only so that the activity's http://127.0.0.1:PORT/_connector serviceUrl passes the Connector allow-list; a
# request that carries a token is validated exactly as in production.
#
# What it does: (1) installs wrk/curl/taskset/ip via apt when missing and builds agentgate and the fixture
# (release); (2) re-runs itself in a fresh network namespace whose only interface is lo (unshare --net), when
# permitted and when no Postgres run is asked for (the Postgres server listens on the host's loopback, which a new
# namespace cannot reach), so nothing can leave the machine; (3) per configuration and round: start the replicas
# (all pinned to CPU 1; wrk and the fixture on CPU 0, when there are 2+ CPUs; the Postgres server is not pinned),
# each on its own port and, on Postgres, the same fresh database (migrated first with `agentgate migrate`);
# check good token -> 202 and wrong-aud token -> 401, warm up, measure with wrk, read peak RSS (VmHWM) and CPU
# time from /proc and the store's own counters from /metrics, stop them by PID. With R replicas the load is
# split: R wrk processes in parallel, each with -c/R connections against one replica; req/s is their sum, and
# p50/p90/p99/max the worst of the R runs (percentiles cannot be merged exactly).
# Output: one line per round and a summary per configuration on stdout; results.tsv, wrk output and server logs
# in target/load/<UTC time>/ (git-ignored). The store's counters, summed over the replicas, must show every
# accepted request committed (agentgate_store_committed_activities_total >=
# agentgate_requests_total{outcome="accepted"}, the difference being at most the requests in flight when wrk
# stopped) and no duplicate, or the run fails.
set -euo pipefail

SELF=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")
ROOT=$(cd "$(dirname "$SELF")/.." && pwd)
DUR=15 CONNS=32 SYNC=full ROUNDS=3 WARM=5 BUILD=1 INSIDE=0 BACKENDS=sqlite REPLICAS=1
PG_BASE=${AGENTGATE_LOAD_PG_URL:-postgres://postgres@127.0.0.1:5432}
ARGS=("$@")
usage() { sed -n '5,15p' "$SELF" | sed 's/^# \{0,1\}//' >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    -d) DUR=$2; shift 2;; -c) CONNS=$2; shift 2;; -s) SYNC=$2; shift 2;; -r) ROUNDS=$2; shift 2;; -w) WARM=$2; shift 2;;
    -b) BACKENDS=$2; shift 2;; -R) REPLICAS=$2; shift 2;; -P) PG_BASE=$2; shift 2;;
    -n) BUILD=0; shift;; --inside) INSIDE=1; shift;; -h|--help) usage;;
    *) echo "unknown option $1" >&2; usage;;
  esac
done
case "$SYNC" in full|normal) ;; *) echo "-s must be full or normal" >&2; exit 2;; esac
for n in "$DUR" "$CONNS" "$ROUNDS" "$WARM"; do
  [[ "$n" =~ ^[0-9]+$ ]] || { echo "-d, -c, -r and -w take whole numbers" >&2; exit 2; }
done
IFS=, read -r -a BACKEND_LIST <<<"$BACKENDS"
IFS=, read -r -a REPLICA_LIST <<<"$REPLICAS"
USE_PG=0
for b in "${BACKEND_LIST[@]}"; do
  case "$b" in sqlite) ;; postgres) USE_PG=1;; *) echo "-b takes sqlite, postgres or both (sqlite,postgres)" >&2; exit 2;; esac
done
for n in "${REPLICA_LIST[@]}"; do
  [[ "$n" =~ ^[1-9][0-9]?$ ]] || { echo "-R takes replica counts from 1 to 99 (e.g. 1,2)" >&2; exit 2; }
  [ "$n" -le "$CONNS" ] || { echo "-R $n: fewer connections (-c $CONNS) than replicas" >&2; exit 2; }
done
case "$PG_BASE" in
  postgres://*@127.0.0.1:*|postgres://*@localhost:*|postgresql://*@127.0.0.1:*|postgresql://*@localhost:*) ;;
  *) echo "-P must be postgres://USER@127.0.0.1:PORT (loopback, no database name)" >&2; exit 2;;
esac
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
  if [ "$USE_PG" = 1 ]; then
    command -v psql >/dev/null || die "-b postgres needs psql (apt-get install postgresql-client)"
    psql -X -Atqc 'SELECT 1' "$PG_BASE/postgres" >/dev/null 2>&1 || die "no Postgres answers at $PG_BASE"
    log "Postgres runs: staying on the host loopback (the server is not reachable from a new network namespace)"
  elif unshare --net true 2>/dev/null; then
    log "re-running inside a loopback-only network namespace"
    exec unshare --net -- bash "$SELF" --inside "${ARGS[@]}"
  fi
  [ "$USE_PG" = 1 ] || log "WARNING: unshare --net not permitted; running on the host loopback (all traffic is to 127.0.0.1 anyway)"
else
  ip link set lo up
fi

# ---------------------------------------------------------------- 2. fixture, token, body
RUN_ID=$(date -u +%Y%m%dT%H%M%SZ)
OUT=$ROOT/target/load/$RUN_ID
SCRATCH=$(mktemp -d /tmp/agentgate-load.XXXXXX)
mkdir -p "$OUT"
FIXTURE_PID="" SERVER_PIDS=() DBS=()   # the only processes (and databases) this script starts
stop_pid() { # stop one process we started, by PID, and reap it
  local p=$1
  if kill -0 "$p" 2>/dev/null; then
    kill -TERM "$p" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$p" 2>/dev/null; then kill -KILL "$p" 2>/dev/null || true; fi
  fi
  wait "$p" 2>/dev/null || true
}
stop_servers() {
  local p
  for p in "${SERVER_PIDS[@]}"; do stop_pid "$p"; done
  SERVER_PIDS=()
}
cleanup() {
  local db
  stop_servers
  if [ -n "$FIXTURE_PID" ]; then stop_pid "$FIXTURE_PID"; fi
  for db in "${DBS[@]}"; do
    psql -X -Atqc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" "$PG_BASE/postgres" >/dev/null 2>&1 || true
  done
  rm -rf "$SCRATCH"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# CPU placement: wrk and the fixture on CPU 0, the server(s) on CPU 1 (as in ../shared/bench/run-anchors.sh).
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
maxr=1
for n in "${REPLICA_LIST[@]}"; do [ "$n" -gt "$maxr" ] && maxr=$n; done
for p in "$FPORT" $(seq "$GPORT" $((GPORT + maxr - 1))); do
  if curl -s -o /dev/null -m 1 "http://127.0.0.1:$p/"; then die "port $p is already in use"; fi
done
url_of() { echo "http://127.0.0.1:$((GPORT + $1))/api/messages"; }   # url_of REPLICA_INDEX

# The same Teams personal-chat message as ../shared/bench/activity.json (wrk-unique.lua rewrites its "id").
BODY=$SCRATCH/activity.json
cat >"$BODY" <<EOT
{"type":"message","id":"1732246046702","timestamp":"2026-11-22T04:07:26.702Z","localTimestamp":"2026-11-22T05:07:26.702+01:00","localTimezone":"Europe/Paris","serviceUrl":"$SU","channelId":"msteams","from":{"id":"29:1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d","name":"Alice Tester","aadObjectId":"aaaaaaaa-0000-0000-0000-000000000001"},"conversation":{"conversationType":"personal","tenantId":"$TENANT","id":"a:1nZ2Hm3rE4kT5yP6uQ7wX8cV9bN0mL1kJ2hG3fD4sA5pO6iU7yT8rE9wQ0aZ1xS2cD3vF4bG5nH6jM7kL8"},"recipient":{"id":"28:$APP_ID","name":"Rusty Bot"},"textFormat":"plain","locale":"en-US","text":"hello from the anchor benchmark","attachments":[],"entities":[{"type":"clientInfo","locale":"en-US","country":"US","platform":"Web","timezone":"Europe/Paris"}],"channelData":{"tenant":{"id":"$TENANT"}}}
EOT

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

post() { # post TOKEN -> HTTP status of one POST of the body to replica 0
  curl -s -o "$SCRATCH/resp" -w '%{http_code}' -m 10 -H 'Content-Type: application/json' \
    -H "Authorization: Bearer $1" --data-binary @"$BODY" "$(url_of 0)" || true
}
jget() { sed -n "s/.*\"$2\":\([^,}]*\).*/\1/p" "$1"; }            # a number from wrk-unique.lua's JSON line
metric() { awk -v k="$2" '$1 == k {print $2; exit}' "$1"; }     # one series from a /metrics snapshot
scrape() { curl -s -m 5 "http://127.0.0.1:$((GPORT + $1))/metrics" >"$2" || die "GET /metrics failed"; }
status_kb() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
CLK=$(getconf CLK_TCK)
sum_metric() { # sum_metric PREFIX SERIES R: the series summed over the R replicas' snapshots PREFIX-<i>.prom
  local t=0 i v
  for i in $(seq 0 $(($3 - 1))); do v=$(metric "$1-$i.prom" "$2"); t=$(awk -v a="$t" -v b="${v:-0}" 'BEGIN {print a + b}'); done
  echo "$t"
}
# wrk_split R SECONDS ID_PREFIX OUTBASE [--latency]: R wrk runs in parallel, one per replica, CONNS/R connections
# each; OUTBASE-<i>.txt and OUTBASE-<i>.json per replica. Fails when any fails.
wrk_split() {
  local r=$1 secs=$2 prefix=$3 base=$4 i c pids=() rc=0 lat=()
  [ -z "${5:-}" ] || lat=("$5")
  c=$((CONNS / r))
  for i in $(seq 0 $((r - 1))); do
    TOKEN=$GOOD BODY=$BODY ID_PREFIX=$prefix-$i RESULT=$base-$i.json "${ON_CLIENT[@]}" timeout $((secs + 30)) \
      wrk -t1 -c"$c" -d"${secs}s" "${lat[@]}" -s "$LUA" "$(url_of "$i")" >"$base-$i.txt" 2>&1 &
    pids+=($!)
  done
  for i in "${pids[@]}"; do wait "$i" || rc=1; done
  return "$rc"
}

# ---------------------------------------------------------------- 3. configurations x rounds
printf 'round\tbackend\treplicas\tsync\trps\tp50_us\tp90_us\tp99_us\tmax_us\tnon2xx\tsock_err\twrk_2xx\tcommitted_in_run\tpeak_rss_kib\tserver_cpu_pct\taccepted_total\tcommitted_total\tduplicate_total\tcommits\tcommit_sum_s\n' \
  >"$OUT/results.tsv"
run_round() { # run_round BACKEND REPLICAS ROUND
  local backend=$1 r=$2 round=$3 tag="$1-R$2-r$3" i cfg db="" store sync good bad t0 t1 peak hwm
  sync=$([ "$backend" = sqlite ] && echo "$SYNC" || echo "-")
  if [ "$backend" = postgres ]; then
    db=$(echo "agentgate_load_${RUN_ID}_R${r}_r${round}" | tr '[:upper:]' '[:lower:]')
    psql -X -Atqc "CREATE DATABASE \"$db\"" "$PG_BASE/postgres" >/dev/null || die "cannot create database $db"
    DBS+=("$db")
    store=$(printf '[store]\nurl = "%s/%s"\n' "$PG_BASE" "$db")
  else
    store=$(printf '[store]\nsynchronous = "%s"\n' "$SYNC")
  fi
  for i in $(seq 0 $((r - 1))); do
    cfg=$SCRATCH/agentgate-$tag-$i.toml
    cat >"$cfg" <<EOT
data_dir = "$SCRATCH/data-$tag-$i"

[server]
bind = "127.0.0.1:$((GPORT + i))"

$store

[clouds.public]
openid_metadata_url = "$META"

[log]
level = "warn"

[[bots]]
app_id = "$APP_ID"
display_name = "load test bot"
allowed_tenants = ["$TENANT"]
EOT
  done
  if [ "$backend" = postgres ]; then
    "$AG" migrate --config "$SCRATCH/agentgate-$tag-0.toml" >"$OUT/$tag.migrate.log" 2>&1 || die "agentgate migrate failed (see $OUT/$tag.migrate.log)"
  fi
  for i in $(seq 0 $((r - 1))); do
    "${ON_SERVER[@]}" "$AG" serve --dev --config "$SCRATCH/agentgate-$tag-$i.toml" >"$OUT/$tag.server$i.log" 2>&1 &
    SERVER_PIDS+=($!)
  done
  for i in $(seq 0 $((r - 1))); do
    wait_http "http://127.0.0.1:$((GPORT + i))/readyz" 200 || { cat "$OUT/$tag.server$i.log" >&2; die "agentgate replica $i did not become ready"; }
  done

  good=$(post "$GOOD"); bad=$(post "$BAD")
  log "$tag: good token -> $good, wrong-aud token -> $bad"
  [ "$good" = 202 ] || die "good token gave $good, expected 202: $(head -c 300 "$SCRATCH/resp")"
  [ "$bad" = 401 ] || die "wrong-aud token gave $bad, expected 401"

  wrk_split "$r" "$WARM" "warm-$tag" "$OUT/$tag.warmup" || die "warm-up wrk failed"
  sleep 0.5   # requests still in flight when wrk stopped finish their commit
  for i in $(seq 0 $((r - 1))); do scrape "$i" "$SCRATCH/before-$i.prom"; done
  t0=0; for i in "${SERVER_PIDS[@]}"; do t0=$((t0 + $(cpu_ticks "$i"))); done
  wrk_split "$r" "$DUR" "run-$tag" "$OUT/$tag.wrk" --latency || die "wrk failed"
  t1=0; for i in "${SERVER_PIDS[@]}"; do t1=$((t1 + $(cpu_ticks "$i"))); done
  sleep 0.5
  peak=0
  for i in $(seq 0 $((r - 1))); do
    scrape "$i" "$SCRATCH/after-$i.prom"
    cp "$SCRATCH/after-$i.prom" "$OUT/$tag.metrics$i.prom"
    hwm=$(status_kb "${SERVER_PIDS[$i]}" VmHWM); [ "$hwm" -gt "$peak" ] && peak=$hwm
  done
  stop_servers

  local files=() req non2xx sock rps p50 p90 p99 mx
  for i in $(seq 0 $((r - 1))); do
    files+=("$OUT/$tag.wrk-$i.json")
    [ -s "${files[$i]}" ] || die "wrk wrote no result (see $OUT/$tag.wrk-$i.txt)"
  done
  agg() { # agg KEY sum|max: KEY over the replicas' wrk results
    local f t=0
    for f in "${files[@]}"; do t=$(awk -v a="$t" -v b="$(jget "$f" "$1")" -v op="$2" 'BEGIN {print (op == "sum") ? a + b : (b > a ? b : a)}'); done
    echo "$t"
  }
  req=$(agg requests sum) non2xx=$(agg non2xx sum) rps=$(agg rps sum)
  sock=$(( $(agg err_connect sum) + $(agg err_read sum) + $(agg err_write sum) + $(agg err_timeout sum) ))
  p50=$(agg p50_us max) p90=$(agg p90_us max) p99=$(agg p99_us max) mx=$(agg max_us max)
  local acc dup com com_run commits csum
  acc=$(sum_metric "$SCRATCH/after" 'agentgate_requests_total{outcome="accepted"}' "$r")
  dup=$(sum_metric "$SCRATCH/after" 'agentgate_requests_total{outcome="duplicate"}' "$r")
  com=$(sum_metric "$SCRATCH/after" agentgate_store_committed_activities_total "$r")
  com_run=$(( com - $(sum_metric "$SCRATCH/before" agentgate_store_committed_activities_total "$r") ))
  commits=$(sum_metric "$SCRATCH/after" agentgate_store_commit_seconds_count "$r")
  csum=$(sum_metric "$SCRATCH/after" agentgate_store_commit_seconds_sum "$r")
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$backend" "$r" "$sync" \
    "$rps" "$p50" "$p90" "$p99" "$mx" "$non2xx" "$sock" "$((req - non2xx))" "$com_run" "$peak" \
    "$(( 100 * (t1 - t0) / CLK / DUR ))" "$acc" "$com" "$dup" "$commits" "$csum" >>"$OUT/results.tsv"
  tail -1 "$OUT/results.tsv" | awk -F'\t' '{
    printf "%s x%s round %s (synchronous=%s): %.0f req/s, p50 %.2f ms, p90 %.2f ms, p99 %.2f ms, max %.1f ms, non-2xx %s, socket errors %s, peak RSS %.1f MiB (largest replica), server CPU %s%% (all replicas)\n",
      $2, $3, $1, $4, $5, $6/1000, $7/1000, $8/1000, $9/1000, $10, $11, $14/1024, $15
    printf "  store: %s committed / %s accepted (%s duplicate) in %s group commits (mean %.1f activities, %.2f ms each); measured run: %s 2xx, %s committed\n",
      $17, $16, $18, $19, ($19 > 0 ? $17/$19 : 0), ($19 > 0 ? 1000*$20/$19 : 0), $12, $13
    if ($17 > $16) printf "  (%d committed beyond accepted: requests in flight when wrk closed its connections, committed but never answered)\n", $17 - $16 }'
  # Every accepted (answered 2xx) activity must be committed. The reverse may differ a little: when wrk stops it
  # closes its connections with requests in flight; those commit, but their handler is dropped before it counts
  # them as accepted. So 0 <= committed - accepted <= connections x (warm-up + measured run).
  [ "$com" -ge "$acc" ] || die "committed ($com) < accepted ($acc): an acknowledged activity was not committed"
  [ "$((com - acc))" -le "$((2 * CONNS))" ] || die "committed ($com) exceeds accepted ($acc) by more than the requests in flight"
  [ "$dup" = 0 ] || die "$dup duplicate(s): the activity ids were not unique"
  [ "$((non2xx + sock))" = 0 ] || die "non-2xx $non2xx, socket errors $sock (see $OUT/$tag.server*.log)"
  [ "$com_run" -ge "$((req - non2xx))" ] || die "fewer commits ($com_run) than 2xx answers ($((req - non2xx))) in the measured run"
  if [ -n "$db" ]; then
    local stored
    stored=$(psql -X -Atqc 'SELECT count(*) FROM inbox' "$PG_BASE/$db")
    [ "$stored" -ge "$acc" ] || die "the database holds $stored activities, fewer than the $acc accepted"
    psql -X -Atqc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" "$PG_BASE/postgres" >/dev/null || true
  fi
}

log "run $RUN_ID: backends ${BACKENDS}, replicas ${REPLICAS}; $ROUNDS round(s) of ${DUR}s after ${WARM}s warm-up, $CONNS connections, store.synchronous=$SYNC (SQLite)"
for backend in "${BACKEND_LIST[@]}"; do
  for r in "${REPLICA_LIST[@]}"; do
    if [ "$backend" = sqlite ] && [ "$r" -gt 1 ]; then
      log "skipping sqlite with $r replicas: SQLite replicas share no store (use -b postgres)"
      continue
    fi
    for round in $(seq 1 "$ROUNDS"); do run_round "$backend" "$r" "$round"; done
  done
done

# ---------------------------------------------------------------- 4. summary (medians over rounds, per configuration)
awk -F'\t' -v conns="$CONNS" -v dur="$DUR" -v rounds="$ROUNDS" -v clients="$([ ${#ON_CLIENT[@]} -gt 0 ] && echo 'wrk on CPU 0, server(s) on CPU 1' || echo 'unpinned')" '
  function med(a, n,   i, j, t) { for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j-1] > a[j]; j--) { t = a[j]; a[j] = a[j-1]; a[j-1] = t }
                                  return n % 2 ? a[(n+1)/2] : (a[n/2] + a[n/2+1]) / 2 }
  NR > 1 { k = $2 " x" $3; if (!(k in n)) order[++nk] = k; c = ++n[k]; rps[k, c] = $5; p50[k, c] = $6; p99[k, c] = $8
           if ($14 > peak[k]) peak[k] = $14; acc[k] += $16; com[k] += $17; sync[k] = $4
           lo[k] = (c == 1 || $5 < lo[k]) ? $5 : lo[k]; hi[k] = ($5 > hi[k]) ? $5 : hi[k] }
  END { for (i = 1; i <= nk; i++) { k = order[i]; m = n[k]
          for (j = 1; j <= m; j++) { r1[j] = rps[k, j]; r2[j] = p50[k, j]; r3[j] = p99[k, j] }
          printf "agentgate load, %s replica(s) (store.synchronous=%s, %d conns, %d s x %d round(s), %s): %.0f req/s median (%.0f-%.0f), p50 %.2f ms, p99 %.2f ms, peak RSS %.1f MiB; committed %d >= accepted %d (every 2xx committed)\n",
            k, sync[k], conns, dur, rounds, clients, med(r1, m), lo[k], hi[k], med(r2, m)/1000, med(r3, m)/1000, peak[k]/1024, com[k], acc[k] } }' \
  "$OUT/results.tsv" | tee "$OUT/summary.txt"
log "results in $OUT"
