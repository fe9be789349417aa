#!/usr/bin/env bash
# End-to-end test of `agentgate mcp` (the MCP bridge, stdio) against REAL MCP hosts nobody here wrote,
# loopback only.
#
#   bash scripts/e2e-mcp-peers.sh            (as root, or where `unshare -r --net` is allowed)
#
# The hosts: the MCP Inspector CLI (@modelcontextprotocol/inspector 2.12.x, `--cli`), the Python `mcp` 2.3.0
# client and the Node @modelcontextprotocol/sdk 1.32.x client (the SDK Claude Code is built on). Each starts
# the real `agentgate mcp --dev --config FILE` itself, as a host does. Teams is played by the scripts: they
# POST activities to the gateway's /api/messages (dev mode: anonymous, loopback only) and a tiny fake Bot
# Connector (scripts/mcp-peers/fake_connector.py, http://127.0.0.1:18090/_connector) answers and records
# everything the gateway sends.
#
# What it checks (one PASS/FAIL line each, then `e2e-mcp: N passed, M failed`; exit status non-zero on any failure):
#  0. the sandbox: a network namespace whose only interface is lo;
#  1. MCP Inspector CLI: tools/list shows exactly our 23 tools; tools/call status works; bad arguments
#     (reply without `text`, reply to an unknown chat) are tool errors that say what is wrong;
#  2. Python `mcp` 2.3.0, mode="auto" (the client probes `server/discover` first: agentgate must answer -32601
#     and keep going) and mode="legacy", with a NotificationBinding for notifications/claude/channel: a message
#     posted to /api/messages arrives with `content` in the ⟦untrusted_content NONCE⟧ envelope and identifier
#     `meta` keys; `reply` reaches the fake Connector (scripts/mcp-peers/py_host.py; stdio recorded by tap.py);
#  3. Node SDK: the same notification receipt and reply (scripts/mcp-peers/node_host.mjs channel);
#  4. the permission relay, with the Node SDK playing Claude Code (node_host.mjs permission), against a bot with
#     policy.approvers and policy.dm = "open", every activity carrying a Bot Framework token signed by a key the
#     fake Connector publishes (only authenticated activities may answer an approval, dev mode or not):
#     experimental["claude/channel/permission"] is declared; the
#     approver's first 1:1 message; permission_request abcde -> an Adaptive Card with two Action.Execute actions
#     (verb agentgate.permission) in the approver's 1:1 chat; a non-approver's adaptiveCard/action invoke (from her
#     own chat: not the card; on the card: not an approver) -> no
#     verdict within 2 s; the approver's -> notifications/claude/channel/permission {abcde, allow}; a second
#     request fghij answered by typing `no fghij` -> deny, and not forwarded as chat; the cards updated in place.
#
# How: outside any sandbox it installs what it needs, idempotently, into a cache dir: a Python venv with
# mcp==2.3.0 and `npm install` of scripts/mcp-peers/package.json (package registries only); the binary is
# $AGENTGATE_BIN, else `cargo build --release`. Then it re-runs itself inside a fresh network namespace with only
# lo (`unshare --net`), so nothing can leave the machine, and stops every process it started (by PID) on exit.
#
# Environment: AGENTGATE_PEERS_CACHE (default $HOME/.cache/agentgate-peers), AGENTGATE_BIN (skip the build),
# AGENTGATE_E2E_KEEP=1 (keep the scratch dir and logs even on success).
set -euo pipefail

SELF=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")
ROOT=$(cd "$(dirname "$SELF")/.." && pwd)
HERE=$ROOT/scripts/mcp-peers
T0=${E2E_T0:-$(date +%s)}

log() { printf '[e2e-mcp %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { printf 'FAIL: %s\n' "$*"; printf 'e2e-mcp: 0 passed, 1 failed\n'; exit 1; }

# Configuration overrides from the caller's environment must not leak into the test.
while IFS= read -r v; do unset "$v"; done < <(compgen -e | grep -E '^AGENTGATE(_CONFIG$|__)' || true)

# ------------------------------------------------------------------------------------------ outside the sandbox
if [ "${1:-}" != "--inside" ]; then
  for c in node npm python3 ip unshare timeout sha256sum; do
    command -v "$c" >/dev/null || die "\`$c\` is required but not installed"
  done
  nodemajor=$(node -p 'process.versions.node.split(".")[0]')
  [ "$nodemajor" -ge 20 ] || die "node >= 20 is required (have $(node -v))"
  python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))' || die "python >= 3.10 is required by mcp 2.x (have $(python3 -V))"
  for f in package.json fake_connector.py tap.py py_host.py node_host.mjs; do
    [ -f "$HERE/$f" ] || die "$HERE/$f is missing"
  done

  CACHE=${AGENTGATE_PEERS_CACHE:-$HOME/.cache/agentgate-peers}
  mkdir -p "$CACHE"
  [ -O "$CACHE" ] || die "$CACHE is not owned by $(id -un); set AGENTGATE_PEERS_CACHE"
  CACHE=$(cd "$CACHE" && pwd)

  # Python mcp 2.3.0 in its own venv.
  VENV=$CACHE/venv-mcp-2.3.0
  if [ ! -f "$VENV/.e2e-installed" ]; then
    log "python venv with mcp==2.3.0 in $VENV"
    rm -rf "$VENV"
    python3 -m venv "$VENV" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
    timeout 600 "$VENV/bin/pip" install --quiet --disable-pip-version-check mcp==2.3.0 || die "pip install mcp==2.3.0 failed"
    touch "$VENV/.e2e-installed"
  fi
  "$VENV/bin/python" -c 'import importlib.metadata as m, sys; sys.exit(m.version("mcp") != "2.3.0")' ||
    die "$VENV does not hold mcp 2.3.0 (remove it to reinstall)"

  # The Node SDK, zod and the Inspector (reused while scripts/mcp-peers/package.json is unchanged).
  NPMD=$CACHE/npm-$(sha256sum "$HERE/package.json" | cut -c1-12)
  if [ ! -f "$NPMD/.e2e-installed" ]; then
    log "npm install of the MCP peers into $NPMD"
    mkdir -p "$NPMD"
    rm -rf "$NPMD/node_modules"
    cp "$HERE/package.json" "$NPMD/"
    (cd "$NPMD" && timeout 600 npm install --no-audit --no-fund --loglevel=error) || die "npm install failed"
    touch "$NPMD/.e2e-installed"
  fi
  for p in @modelcontextprotocol/inspector @modelcontextprotocol/sdk zod; do
    [ -f "$NPMD/node_modules/$p/package.json" ] || die "$p is not installed in $NPMD (remove the dir to reinstall)"
  done
  [ -x "$NPMD/node_modules/.bin/mcp-inspector" ] || die "the mcp-inspector binary is missing in $NPMD"

  if [ -n "${AGENTGATE_BIN:-}" ]; then
    BIN=$AGENTGATE_BIN
  else
    log "cargo build --release"
    (cd "$ROOT" && cargo build --release --quiet) || die "cargo build --release failed"
    target=${CARGO_TARGET_DIR:-$ROOT/target}
    case $target in /*) ;; *) target=$ROOT/$target ;; esac
    BIN=$target/release/agentgate
  fi
  [ -x "$BIN" ] || die "$BIN is not an executable"
  BIN=$(cd "$(dirname "$BIN")" && pwd -P)/$(basename "$BIN")
  log "agentgate $("$BIN" --version 2>/dev/null || echo '?') ($BIN), node $(node -v), $("$VENV/bin/python" -V)," \
    "inspector $(node -p "require('$NPMD/node_modules/@modelcontextprotocol/inspector/package.json').version")," \
    "sdk $(node -p "require('$NPMD/node_modules/@modelcontextprotocol/sdk/package.json').version")," \
    "python mcp $("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("mcp"))')"

  SCRATCH=$(mktemp -d /tmp/agentgate-e2e-mcp.XXXXXX)
  export E2E_T0=$T0 E2E_SCRATCH=$SCRATCH E2E_VENV=$VENV E2E_NPMD=$NPMD E2E_BIN=$BIN
  if unshare --net true 2>/dev/null; then
    log "re-running inside a loopback-only network namespace (unshare --net)"
    exec timeout --foreground -k 10 300 unshare --net -- bash "$SELF" --inside
  elif unshare --user --map-root-user --net true 2>/dev/null; then
    log "re-running inside a loopback-only network namespace (unshare --user --map-root-user --net)"
    exec timeout --foreground -k 10 300 unshare --user --map-root-user --net -- bash "$SELF" --inside
  fi
  rm -rf "$SCRATCH"
  die "cannot create a network namespace (unshare --net): run as root or allow unprivileged user namespaces"
fi

# ------------------------------------------------------------------------------------------ inside the namespace
S=${E2E_SCRATCH:?} VENV=${E2E_VENV:?} NPMD=${E2E_NPMD:?} BIN=${E2E_BIN:?}
L=$S/logs
mkdir -p "$L" "$S/pids" "$S/node"
ip link set lo up || die "ip link set lo up failed inside the namespace"

PIDS=()
PASSED=0 FAILED=0
# is_gateway PID: PID is (still) an `agentgate mcp` of this binary.
is_gateway() { [ -r "/proc/$1/cmdline" ] && [[ "$(tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null)" == "$BIN mcp "* ]]; }
cleanup() {
  local rc=$? p f
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  # `agentgate mcp` processes the hosts started (tap.py notes their PIDs): stop any a host left behind.
  for f in "$S"/pids/*; do
    [ -e "$f" ] || continue
    p=$(basename "$f")
    if is_gateway "$p"; then kill "$p" 2>/dev/null || true; fi
  done
  for p in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
  done
  if [ "$FAILED" -gt 0 ] || [ "$rc" -ne 0 ] || [ "${AGENTGATE_E2E_KEEP:-0}" = 1 ]; then
    echo "logs and data kept in $S (logs: $L)" >&2
  else
    rm -rf "$S"
  fi
}
trap cleanup EXIT
trap 'fail "interrupted (SIGTERM/SIGINT or the 300 s overall timeout)"; summary; exit 143' TERM INT

pass() { echo "PASS: $1"; PASSED=$((PASSED + 1)); }
fail() { echo "FAIL: $1"; FAILED=$((FAILED + 1)); }
# check NAME CMD...: run CMD (its output goes to checks.log), PASS when it succeeds.
check() {
  local name=$1; shift
  echo "== $name: $*" >>"$L/checks.log"
  if "$@" >>"$L/checks.log" 2>&1; then pass "$name"; else fail "$name"; fi
}
summary() { echo "runtime: $(($(date +%s) - T0)) s"; echo "e2e-mcp: $PASSED passed, $FAILED failed"; }
fatal() {
  fail "$1"
  local f
  for f in "$L"/*.log "$L"/*.err; do [ -s "$f" ] && { echo "--- tail $f"; tail -n 15 "$f"; }; done
  summary
  exit 1
}
# bg LOG CMD...: start a long-running process; remember its PID.
bg() { local out=$1; shift; "$@" >"$L/$out" 2>&1 & PIDS+=($!); }
wait_log() {
  for _ in $(seq $(($3 * 10))); do grep -qE "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  return 1
}
# insp_has NAME EXPR: evaluate the Python expression EXPR over Inspector run NAME (see inspect below): `d` = the
# first JSON line of its stdout (None if none), `err` = its stderr, `rc` = its exit status, `env` = the
# environment; print it; fail when it is falsy.
insp_has() {
  python3 - "$S/insp-$1" "$2" <<'EOF'
import json, os, sys
base, expr = sys.argv[1], sys.argv[2]
out = open(base + ".json", encoding="utf-8").read()
lines = [l for l in out.splitlines() if l.strip().startswith("{")]
scope = {"d": json.loads(lines[0]) if lines else None, "err": open(base + ".err", encoding="utf-8").read(),
         "rc": int(open(base + ".rc").read()), "env": os.environ, "os": os}
v = eval("(" + expr + "\n)", scope)
print(json.dumps(v, ensure_ascii=False)[:2000])
sys.exit(0 if v else 1)
EOF
}
# run_host NAME SECONDS CMD...: run an MCP host script; relay its PASS/FAIL lines. The host must end with DONE.
run_host() {
  local name=$1 secs=$2 rc=0 line seen=0; shift 2
  timeout -k 5 "$secs" "$@" >"$L/$name.out" 2>"$L/$name.err" || rc=$?
  while IFS= read -r line; do
    case $line in
      PASS:\ *) pass "${line#PASS: }"; seen=$((seen + 1)) ;;
      FAIL:\ *) fail "${line#FAIL: }"; seen=$((seen + 1)) ;;
    esac
  done <"$L/$name.out"
  if ! grep -qx DONE "$L/$name.out"; then
    fail "$name: the host did not finish (exit status $rc; see $L/$name.err)"
  elif [ "$rc" -ne 0 ] && [ "$(grep -c '^FAIL: ' "$L/$name.out" || true)" = 0 ]; then
    fail "$name: the host exited with status $rc without naming a failed check"
  fi
  [ "$seen" -gt 0 ] || fail "$name: the host reported no checks"
}

NONCE=$(date +%s)-$$-$RANDOM
FAKE_PORT=18090
CONNECTOR=http://127.0.0.1:$FAKE_PORT/_connector
RECORD=$S/connector.jsonl
export E2E_APP_ID=b0b0b0b0-0000-4000-8000-00000000e2e1
export E2E_TENANT=7e7e7e7e-0000-4000-8000-00000000e2e1
export E2E_ALEX=aaaaaaaa-0000-4000-8000-00000000e2e1
export E2E_APPROVER=a9950000-0000-4000-8000-00000000e2e1
export E2E_EVE=eeeeeeee-0000-4000-8000-00000000e2e1
export E2E_NONCE=$NONCE

# config NAME [EXTRA_POLICY_LINES]: a dev configuration with its own store, the fake Connector's OpenID metadata
# (anonymous dev requests need no keys, but the key cache must ask somewhere local) and one bot.
config() {
  local name=$1 extra=${2:-}
  mkdir -p "$S/$name"
  cat >"$S/$name/agentgate.toml" <<EOF
data_dir = "$S/$name/data"

[server]
bind = "127.0.0.1:0"

[clouds.public]
openid_metadata_url = "http://127.0.0.1:$FAKE_PORT/v1/.well-known/openidconfiguration"
token_authority = "http://127.0.0.1:$FAKE_PORT"

[outbound]
poll_interval_ms = 20

[[bots]]
app_id = "$E2E_APP_ID"
display_name = "agentgate e2e"
allowed_tenants = ["$E2E_TENANT"]
policy.dm = "open"
$extra
EOF
}

# ---------------------------------------------------------------------------- sandbox + fake Connector
log "scratch $S"
only_lo() { [ "$(ip -o link show | grep -cv ' lo:')" = 0 ] && ip -o link show | grep -q ' lo:.*UP'; }
check "sandbox: the network namespace has no interface but lo (up)" only_lo
# Nothing outside loopback is reachable from here (a public address fails at once: no route).
no_route() { ! python3 -c 'import socket; s = socket.create_connection(("192.0.2.1", 443), timeout=2)'; }
check "sandbox: a non-loopback address is unreachable" no_route

# A signing key for scenario 4: the fake Connector publishes its JWK (endorsed for msteams) and the Node host
# signs each activity with it, as Microsoft does, since only authenticated activities may answer an approval.
mkdir -p "$S/jwt"
node -e '
const { generateKeyPairSync } = require("node:crypto"); const fs = require("node:fs");
const { privateKey, publicKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
fs.writeFileSync(process.argv[1], privateKey.export({ type: "pkcs8", format: "pem" }), { mode: 0o600 });
const jwk = { ...publicKey.export({ format: "jwk" }), kid: "e2e-key-1", use: "sig", alg: "RS256", endorsements: ["msteams"] };
fs.writeFileSync(process.argv[2], JSON.stringify({ keys: [jwk] }));' "$S/jwt/key.pem" "$S/jwt/jwks.json" \
  || fatal "could not generate the e2e signing key"
export E2E_JWKS=$S/jwt/jwks.json E2E_SIGNING_KEY=$S/jwt/key.pem E2E_SIGNING_KID=e2e-key-1
bg connector.log python3 "$HERE/fake_connector.py" "$FAKE_PORT" "$RECORD"
wait_log "$L/connector.log" "^fake connector on $FAKE_PORT" 10 || fatal "the fake Connector did not start"

# ---------------------------------------------------------------------------- 1. MCP Inspector CLI
log "1. MCP Inspector CLI"
config inspector
INSPECTOR=$NPMD/node_modules/.bin/mcp-inspector
# inspect NAME ARGS...: one Inspector --cli run against `agentgate mcp --dev` (config through -e: the Inspector
# does not pass its own environment to the server); stdout -> $S/insp-NAME.json, stderr -> $S/insp-NAME.err;
# the exit status in $S/insp-NAME.rc.
inspect() {
  local name=$1 rc=0; shift
  timeout -k 5 60 "$INSPECTOR" --cli -q --format json -e "AGENTGATE_CONFIG=$S/inspector/agentgate.toml" -e RUST_LOG=warn \
    "$@" "$BIN" mcp --dev >"$S/insp-$name.json" 2>"$S/insp-$name.err" </dev/null || rc=$?
  echo "$rc" >"$S/insp-$name.rc"
  cat "$S/insp-$name.json" "$S/insp-$name.err" >>"$L/inspector.log"
}
export TOOLS="ack_messages claim_conversations delete_message get_file list_conversations list_members react read_messages recent_audit release_conversations reply send_card send_file send_message send_to_user send_typing status stream_append stream_finish stream_start update_card update_message wait_for_messages"
export RECORD
inspect list --method tools/list
check "inspector: tools/list shows exactly our 23 tools, each with a description and an object input schema" \
  insp_has list 'rc == 0 and sorted(x["name"] for x in d["result"]["tools"]) == sorted(env["TOOLS"].split())
    and all(len(x.get("description", "")) > 10 and x["inputSchema"]["type"] == "object" for x in d["result"]["tools"])'
inspect status --method tools/call --tool-name status
check "inspector: tools/call status -> the bot and its tenant, store ok, no permission relay (no approvers)" \
  insp_has status 'rc == 0 and not d["result"].get("isError") and d["result"]["structuredContent"]["bots"][0]["app_id"] == env["E2E_APP_ID"]
    and d["result"]["structuredContent"]["bots"][0]["tenants"] == [env["E2E_TENANT"]]
    and d["result"]["structuredContent"]["health"]["store"] == "ok" and d["result"]["structuredContent"]["session"]["permission_relay"] is False'
inspect missing --method tools/call --tool-name reply --tool-args-json '{"chat_id": "a:nowhere"}'
check "inspector: tools/call reply without its required text -> a tool error naming the missing field (exit 5, tool_is_error)" \
  insp_has missing 'rc == 5 and d["result"]["isError"] is True and "missing field" in d["result"]["content"][0]["text"]
    and "text" in d["result"]["content"][0]["text"] and "tool_is_error" in err'
inspect unknown --method tools/call --tool-name reply --tool-args-json '{"chat_id": "a:nowhere", "text": "hello"}'
check "inspector: tools/call reply to an unknown chat_id -> a tool error saying so (exit 5), nothing sent" \
  insp_has unknown 'rc == 5 and d["result"]["isError"] is True and "unknown chat_id a:nowhere" in d["result"]["content"][0]["text"]
    and not os.path.exists(env["RECORD"])'

# ---------------------------------------------------------------------------- 2. Python mcp 2.3.0
# host_cmd NAME: `agentgate mcp --dev --config` of scenario NAME behind tap.py (stdio frames -> $L/NAME.frames.jsonl,
# the gateway's stderr -> $L/NAME.agentgate.log), listening for Teams on a fixed port (the hosts POST to it).
host_cmd() {
  printf '%s\n' python3 "$HERE/tap.py" "$L/$1.frames.jsonl" "$L/$1.agentgate.log" "$S/pids" -- \
    "$BIN" mcp --dev --config "$S/$1/agentgate.toml" --bind "127.0.0.1:$2"
}
log "2. Python mcp 2.3.0 (mode auto, then legacy)"
for mode in auto legacy; do
  config "py-$mode"
  port=$([ "$mode" = auto ] && echo 3981 || echo 3982)
  mapfile -t cmd < <(host_cmd "py-$mode" "$port")
  run_host "py-$mode" 60 "$VENV/bin/python" "$HERE/py_host.py" --mode "$mode" --http "http://127.0.0.1:$port" \
    --connector-url "$CONNECTOR" --record "$RECORD" --frames "$L/py-$mode.frames.jsonl" -- "${cmd[@]}"
done

# ---------------------------------------------------------------------------- 3. Node SDK 1.32.x
log "3. Node @modelcontextprotocol/sdk: channel notifications"
# ESM resolves packages next to the script: run a copy beside a link to the installed node_modules.
cp "$HERE/node_host.mjs" "$S/node/"
ln -sfn "$NPMD/node_modules" "$S/node/node_modules"
config node
mapfile -t cmd < <(host_cmd node 3983)
run_host node-channel 60 node "$S/node/node_host.mjs" channel --http http://127.0.0.1:3983 --connector-url "$CONNECTOR" \
  --record "$RECORD" -- "${cmd[@]}"

# ---------------------------------------------------------------------------- 4. permission relay
log "4. permission relay, the Node SDK playing Claude Code"
config perm "policy.approvers = [\"$E2E_APPROVER\"]
policy.approval_timeout_secs = 120"
mapfile -t cmd < <(host_cmd perm 3984)
run_host node-permission 90 node "$S/node/node_host.mjs" permission --http http://127.0.0.1:3984 --connector-url "$CONNECTOR" \
  --record "$RECORD" -- "${cmd[@]}"

# Every session ended with its host: the gateways exited on their own.
gateways_gone() {
  local f p
  for _ in $(seq 50); do
    local left=0
    for f in "$S"/pids/*; do
      [ -e "$f" ] || continue
      p=$(basename "$f")
      if is_gateway "$p"; then left=$((left + 1)); fi
    done
    [ "$left" = 0 ] && return 0
    sleep 0.1
  done
  return 1
}
check "every agentgate mcp exited when its host closed stdio" gateways_gone
cp "$RECORD" "$L/" 2>/dev/null || true

summary
[ "$FAILED" -eq 0 ]
