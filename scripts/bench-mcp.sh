#!/usr/bin/env bash
# MCP push-latency benchmark (issue 4): from the 202 answer to `POST /api/messages` until the message's
# `notifications/claude/channel` reaches an MCP host on stdio. Self-contained; loopback only.
#
#   bash scripts/bench-mcp.sh [-n MESSAGES] [-c POSTERS] [-w WARMUP] [-r ROUNDS] [-x]
#     -n  measured messages per run (default 2000)    -c  posters of the concurrent run (default 8)
#     -w  warm-up messages per run (default 100)      -r  rounds (default 3)
#     -x  skip the build step
#
# Each round runs examples/bench_mcp.rs twice, each time with a fresh `agentgate mcp --dev` child and store:
# one poster in a closed loop (post, wait for the notification, next: the idle push path's latency) and -c posters
# that never wait for notifications (the push path's throughput while intake runs flat out). See the example's
# header for exactly what is timed and checked (every message notified exactly once, or the run fails).
# Placement (2+ CPUs): the gateway alone on CPU 1, the example (host + posters) on CPU 0. Runs inside a
# loopback-only network namespace when permitted. Other work on the machine skews the figures: each round records
# the 1-minute load average; use -r 3 and read the median round.
# Output: a table on stdout; per round the example's results.tsv and per-message latency-cK.tsv files in
# target/bench-mcp/<UTC time>/ (git-ignored).
set -euo pipefail

SELF=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")
ROOT=$(cd "$(dirname "$SELF")/.." && pwd)
N=2000 C=8 W=100 ROUNDS=3 BUILD=1 INSIDE=0 OUT=""
ARGS=("$@")
usage() { sed -n '5,8p' "$SELF" | sed 's/^# \{0,1\}//' >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    -n) N=$2; shift 2;; -c) C=$2; shift 2;; -w) W=$2; shift 2;; -r) ROUNDS=$2; shift 2;; -x) BUILD=0; shift;;
    --inside) INSIDE=1; OUT=$2; shift 2;; -h|--help) usage;;
    *) echo "unknown option $1" >&2; usage;;
  esac
done
for v in "$N" "$C" "$ROUNDS"; do
  [[ "$v" =~ ^[1-9][0-9]*$ ]] || { echo "-n, -c and -r take whole numbers >= 1" >&2; exit 2; }
done
[[ "$W" =~ ^[0-9]+$ ]] || { echo "-w takes a whole number" >&2; exit 2; }
log() { printf '[bench-mcp %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }

# Configuration from the caller's environment must not leak into the measured gateway (the example drops it too).
while IFS= read -r v; do unset "$v"; done < <(compgen -e | grep -E '^(AGENTGATE(_CONFIG$|__)|RUST_LOG$)' || true)

AG=$ROOT/target/release/agentgate
EX=$ROOT/target/release/examples/bench_mcp

if [ "$INSIDE" = 0 ]; then
  if ! command -v taskset >/dev/null; then
    log "apt-get install util-linux"
    sudo_=(); [ "$(id -u)" = 0 ] || sudo_=(sudo)
    "${sudo_[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo_[@]}" apt-get install -y -qq util-linux >/dev/null
  fi
  if [ "$BUILD" = 1 ]; then
    log "cargo build --release (agentgate, examples/bench_mcp)"
    (cd "$ROOT" && cargo build --release -q --bin agentgate --example bench_mcp)
  fi
  { [ -x "$AG" ] && [ -x "$EX" ]; } || die "missing $AG or $EX (run without -x)"
  OUT=$ROOT/target/bench-mcp/$(date -u +%Y%m%dT%H%M%SZ)
  mkdir -p "$OUT"
  # Bounded: a run notices a missing notification within 60 s; generous per round.
  limit=$(( (N / 100 + 180) * ROUNDS ))
  if unshare --net true 2>/dev/null; then
    log "re-running inside a loopback-only network namespace (time limit ${limit} s)"
    exec timeout --foreground -k 10 "$limit" unshare --net -- bash "$SELF" "${ARGS[@]}" --inside "$OUT"
  fi
  log "WARNING: unshare --net not permitted; running on the host loopback (all traffic is to 127.0.0.1 anyway)"
  exec timeout --foreground -k 10 "$limit" bash "$SELF" "${ARGS[@]}" --inside "$OUT"
fi
ip link set lo up 2>/dev/null || true

if [ "$(nproc)" -ge 2 ]; then
  ON_CLIENT=(taskset -c 0) GW_CPU=(--gateway-cpu 1) PLACEMENT="gateway on CPU 1; host + posters on CPU 0"
else
  ON_CLIENT=() GW_CPU=() PLACEMENT="one CPU shared"
fi

log "MCP push latency: $N messages after $W warm-up per run, 1 poster (closed loop) and $C posters (open loop), $ROUNDS round(s); $PLACEMENT"
printf 'round\tload1\tposters\tmessages\tp50_us\tp90_us\tp99_us\tmax_us\tsend_p50_us\tsend_p99_us\tsend_max_us\tearly_pct\tper_s\tgateway_cpu_pct\n' >"$OUT/results.tsv"
for round in $(seq 1 "$ROUNDS"); do
  load=$(cut -d' ' -f1 /proc/loadavg)
  "${ON_CLIENT[@]}" "$EX" --bin "$AG" -n "$N" -w "$W" -c "1,$C" "${GW_CPU[@]}" --out "$OUT/r$round" >"$OUT/r$round.md" 2>"$OUT/r$round.log" ||
    { tail -n 40 "$OUT/r$round.log" >&2; die "round $round failed (see $OUT/r$round.log)"; }
  tail -n +2 "$OUT/r$round/results.tsv" | sed "s/^/$round\t$load\t/" >>"$OUT/results.tsv"
  log "round $round (load $load): $(awk -F'\t' -v r="$round" '$1 == r { printf "%s poster(s): p50 %s µs, p99 %s µs, %s msg/s; ", $3, $5, $7, $13 }' "$OUT/results.tsv")"
done

{
  echo
  echo "agentgate MCP push: 202 of POST /api/messages -> notifications/claude/channel at a stdio host (rmcp client);"
  echo "$N messages per run after $W warm-up, fresh gateway + store per run, store.synchronous=full, nothing acknowledged; $PLACEMENT"
  echo
  awk -F'\t' 'NR == 1 { printf "%5s %6s %7s %8s %9s %9s %9s %9s %12s %12s %12s %8s %8s %8s\n", "round", "load1", "posters", "messages", "p50 µs", "p90 µs", "p99 µs", "max µs", "send p50 µs", "send p99 µs", "send max µs", "early %", "msg/s", "gw CPU%"; next }
              { printf "%5s %6s %7s %8s %9s %9s %9s %9s %12s %12s %12s %8s %8s %8s\n", $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14 }' "$OUT/results.tsv"
  if [ "$ROUNDS" -gt 1 ]; then
    # The median round by the closed-loop p50 (202 -> notification).
    med=$(awk -F'\t' 'NR > 1 && $3 == 1 { print $5 "\t" $1 }' "$OUT/results.tsv" | sort -n | awk -v k="$ROUNDS" 'NR == int((k + 1) / 2) { print $2 }')
    echo
    echo "median round (by the closed-loop p50): $med"
    cat "$OUT/r$med.md"
  else
    echo
    cat "$OUT/r1.md"
  fi
  echo
  echo "early % = share of messages whose notification reached the host before their 202 did (negative latency);"
  echo "gw CPU% = the gateway's CPU time over the measured window (100 = its one core busy)."
  echo "checked: every POST answered 202; every message (warm-up included) notified exactly once, no other notification"
} | tee "$OUT/summary.txt"
log "results in $OUT"
