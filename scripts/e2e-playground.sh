#!/usr/bin/env bash
# End-to-end test of agentgate against the REAL Microsoft 365 Agents Playground (npm), loopback only.
#
#   bash scripts/e2e-playground.sh            (as root, or where `unshare -r --net` is allowed)
#
# Needs ../shared (relative to the repo root: the peers and their notes, see ../shared/peers/README.md and
# ../shared/reference/real-peers.md). Without it (a plain clone) the script prints SKIP and exits 0; every
# other problem is a failure (non-zero exit).
#
# What it does:
#  1. outside any sandbox: `npm install` of the peers (Playground 0.2.28, ws, ...) into a cache dir under /tmp
#     (a copy of ../shared/peers/package.json; ../shared itself is never written), and `cargo build` (debug);
#  2. re-runs itself inside a fresh network namespace whose only interface is lo (`unshare --net`), so nothing
#     can leave the machine; the OpenID metadata/JWKS come from the local fixture (../shared/peers/jwt/fixture.js);
#  3. scenario A (dev, anonymous): Playground -> `agentgate serve --dev` (built-in Playground bot);
#     scenario B (authenticated): Playground -> jwt/auth-proxy.js (mints an RS256 token per request) ->
#     `agentgate serve --dev --config B.toml`; a request that carries a token is fully validated even in --dev
#     (non-dev mode would refuse the Playground's http://localhost/_connector serviceUrl with 400).
#     The Playground is driven through its HTTP API (install, personal message, Adaptive Card Action.Submit,
#     Action.Execute invoke, channel @mention); assertions use `agentgate inbox` and the Playground's
#     events-recording file (the Playground's own API answers 200 even when the bot failed). Scenario B also
#     sends forged requests with curl (wrong aud, no token with a public serviceUrl, HS256, ...).
#  4. prints PASS/FAIL per check and `e2e: N passed, M failed`; stops every process it started, by PID.
#
# Environment: AGENTGATE_E2E_PEERS_CACHE (npm install dir, default /tmp/agentgate-e2e-peers-<hash>),
# AGENTGATE_E2E_KEEP=1 (keep the scratch dir and logs even on success).
set -euo pipefail

SELF=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")
ROOT=$(cd "$(dirname "$SELF")/.." && pwd)
SHARED=$ROOT/../shared
T0=${E2E_T0:-$(date +%s)}

log() { printf '[e2e %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { printf 'FAIL: %s\n' "$*"; printf 'e2e: 0 passed, 1 failed\n'; exit 1; }

# Configuration overrides from the caller's environment must not leak into the test.
while IFS= read -r v; do unset "$v"; done < <(compgen -e | grep -E '^AGENTGATE(_CONFIG$|__)' || true)

# ------------------------------------------------------------------------------------------ outside the sandbox
if [ "${1:-}" != "--inside" ]; then
  if [ ! -d "$SHARED" ]; then
    echo "SKIP: $SHARED is absent (a plain clone): the Agents Playground e2e needs ../shared/peers; nothing was run."
    exit 0
  fi
  SHARED=$(cd "$SHARED" && pwd)
  PEERS_SRC=$SHARED/peers
  for f in package.json jwt/fixture.js jwt/auth-proxy.js; do
    [ -f "$PEERS_SRC/$f" ] || die "$PEERS_SRC/$f is missing"
  done
  for c in node npm cargo curl ip unshare timeout sha256sum; do
    command -v "$c" >/dev/null || die "\`$c\` is required but not installed"
  done
  nodemajor=$(node -p 'process.versions.node.split(".")[0]')
  [ "$nodemajor" -ge 20 ] || die "node >= 20 is required (have $(node -v))"

  # npm install into a cache dir (reused while ../shared/peers/package.json is unchanged).
  hash_in=("$PEERS_SRC/package.json")
  [ -f "$PEERS_SRC/package-lock.json" ] && hash_in+=("$PEERS_SRC/package-lock.json")
  hash=$(cat "${hash_in[@]}" | sha256sum | cut -c1-12)
  PEERS_CACHE=${AGENTGATE_E2E_PEERS_CACHE:-/tmp/agentgate-e2e-peers-$hash}
  mkdir -p "$PEERS_CACHE"
  [ -O "$PEERS_CACHE" ] || die "$PEERS_CACHE is not owned by $(id -un); set AGENTGATE_E2E_PEERS_CACHE"
  if [ ! -f "$PEERS_CACHE/.e2e-installed" ]; then
    log "npm install of the peers into $PEERS_CACHE"
    rm -rf "$PEERS_CACHE/node_modules"
    cp "$PEERS_SRC/package.json" "$PEERS_CACHE/"
    if [ -f "$PEERS_SRC/package-lock.json" ]; then
      cp "$PEERS_SRC/package-lock.json" "$PEERS_CACHE/"
      (cd "$PEERS_CACHE" && timeout 600 npm ci --no-audit --no-fund --loglevel=error) || die "npm ci failed"
    else
      (cd "$PEERS_CACHE" && timeout 600 npm install --no-audit --no-fund --loglevel=error) || die "npm install failed"
    fi
    touch "$PEERS_CACHE/.e2e-installed"
  fi
  [ -f "$PEERS_CACHE/node_modules/@microsoft/m365agentsplayground/cli.js" ] || die "the Playground is not installed in $PEERS_CACHE"
  log "Agents Playground $(node -p "require('$PEERS_CACHE/node_modules/@microsoft/m365agentsplayground/package.json').version"), node $(node -v)"

  log "cargo build (debug)"
  (cd "$ROOT" && cargo build --quiet) || die "cargo build failed"
  target=${CARGO_TARGET_DIR:-$ROOT/target}
  case $target in /*) ;; *) target=$ROOT/$target ;; esac
  BIN=$target/debug/agentgate
  [ -x "$BIN" ] || die "$BIN was not built"

  SCRATCH=$(mktemp -d /tmp/agentgate-e2e.XXXXXX)
  mkdir -p "$SCRATCH/peers"
  cp -R "$PEERS_SRC/jwt" "$SCRATCH/peers/"     # fixture.js writes its test key next to itself: use a copy
  chmod -R u+w "$SCRATCH/peers"
  rm -f "$SCRATCH/peers/jwt/test-key.pem"       # a fresh key per run

  export E2E_T0=$T0 E2E_SCRATCH=$SCRATCH E2E_PEERS_CACHE=$PEERS_CACHE E2E_BIN=$BIN
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
S=${E2E_SCRATCH:?} P=${E2E_PEERS_CACHE:?} BIN=${E2E_BIN:?}
J=$S/peers/jwt L=$S/logs
mkdir -p "$L" "$S/a" "$S/b" "$S/pg-a" "$S/pg-b"
ip link set lo up || die "ip link set lo up failed inside the namespace"

PIDS=()
PASSED=0 FAILED=0
cleanup() {
  local rc=$?
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
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
summary() { echo "runtime: $(($(date +%s) - T0)) s"; echo "e2e: $PASSED passed, $FAILED failed"; }
fatal() {
  fail "$1"
  local f
  for f in "$L"/*.log; do [ -f "$f" ] && { echo "--- tail $f"; tail -n 15 "$f"; }; done
  summary
  exit 1
}

# bg LOG CMD...: start a long-running process; remember its PID (env -C and node exec, so $! is the process).
bg() { local out=$1; shift; "$@" >"$L/$out" 2>&1 & PIDS+=($!); }
# wait_log FILE REGEX SECONDS: wait until FILE has a line matching REGEX.
wait_log() {
  for _ in $(seq $(($3 * 10))); do grep -qE "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  return 1
}
# wait_http URL STATUS SECONDS
wait_http() {
  local code
  for _ in $(seq $(($3 * 5))); do
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$1" || true)
    [ "$code" = "$2" ] && return 0
    sleep 0.2
  done
  return 1
}

# Small node helpers: the Playground driver and a JSON query tool (no jq needed).
cat >"$S/drive.js" <<'EOF'
// Drives the Agents Playground through its HTTP API (what its web UI calls). Bots get: installationUpdate,
// conversationUpdate, a personal message (E2E_TEXT), an Adaptive Card Action.Submit, an Action.Execute invoke and a
// channel @mention. The card itself is posted to the Playground's mock Connector, as the bot would (agentgate does
// not send replies yet). Prints every API response as JSON. usage: node drive.js BASE_URL
const BASE = process.argv[2], TEXT = process.env.E2E_TEXT;
const j = async (method, path, body) => {
  const r = await fetch(BASE + path, { method, headers: { 'content-type': 'application/json' },
    body: body && JSON.stringify(body), signal: AbortSignal.timeout(15000) });
  const t = await r.text(); let v; try { v = JSON.parse(t); } catch { v = t; }
  if (r.status >= 300) throw new Error(`${method} ${path} -> ${r.status} ${t}`);
  return { status: r.status, body: v };
};
const sleep = ms => new Promise(r => setTimeout(r, ms));
(async () => {
  const out = {};
  const cfg = (await j('GET', '/_internal/v1/config')).body.config;
  out.config = cfg;
  const me = cfg.currentUser.id, bot = cfg.bot.id, pc = cfg.personalChat.id, team = cfg.teams[0].id, at = `<at>${cfg.bot.name}</at>`;
  const conv = encodeURIComponent(pc);
  out.install = await j('POST', `/_debug/conversation/${conv}/installation`, {});
  await sleep(500);
  out.message = await j('POST', `/_conversation/v1/conversations/${conv}/messages`, { from: { id: me }, text: TEXT, textFormat: 'plain' });
  out.card = await j('POST', `/_connector/v3/conversations/${conv}/activities`, { type: 'message', from: { id: bot },
    attachments: [{ contentType: 'application/vnd.microsoft.card.adaptive', content: { type: 'AdaptiveCard', version: '1.4',
      body: [{ type: 'TextBlock', text: 'Approve the tool call?' }],
      actions: [{ type: 'Action.Submit', title: 'Approve', data: { decision: 'approve', requestId: 'req-42' } },
                { type: 'Action.Execute', title: 'Deny', verb: 'deny', data: { requestId: 'req-42' } }] } }] });
  const cardId = out.card.body.id;
  out.submit = await j('POST', '/_conversation/v1/submit', { conversation: { id: pc }, from: { id: me }, replyToId: cardId,
    value: { decision: 'approve', requestId: 'req-42' } });
  out.invoke = await j('POST', '/_conversation/v1/invoke', { name: 'adaptiveCard/action', from: { id: me }, conversation: { id: pc },
    replyToId: cardId, value: { action: { type: 'Action.Execute', verb: 'deny', data: { requestId: 'req-42' } } } });
  out.channel = await j('POST', `/_conversation/v1/conversations/${encodeURIComponent(team)}/messages`, { from: { id: me },
    text: `${at} channel ${TEXT}`, textFormat: 'plain', mentions: [{ mentioned: { id: bot }, text: at }] });
  console.log(JSON.stringify(out));
})().catch(e => { console.error('driver failed:', e); process.exit(1); });
EOF
cat >"$S/q.js" <<'EOF'
// node q.js KIND FILE EXPR: evaluate EXPR with `d` = the parsed FILE and `env` = process.env; print the result;
// exit 1 when it is false/null/undefined. KIND: json | inbox (JSON lines; each entry gets `b` = its parsed body)
// | rec (the Playground's events-recording file: JSON records separated by ---).
const fs = require('fs'); const [kind, file, expr] = process.argv.slice(2);
const text = fs.existsSync(file) ? fs.readFileSync(file, 'utf8') : '';
let d;
if (kind === 'json') d = JSON.parse(text);
else if (kind === 'inbox') d = text.split('\n').filter(l => l.trim()).map(l => { const e = JSON.parse(l); try { e.b = JSON.parse(e.body); } catch { e.b = {}; } return e; });
else d = text.split(/\n---\n?/).filter(s => s.trim()).map(s => JSON.parse(s));
const v = new Function('d', 'env', `return (${expr});`)(d, process.env);
console.log(typeof v === 'string' ? v : JSON.stringify(v));
process.exit(v === false || v === null || v === undefined ? 1 : 0);
EOF
q() { node "$S/q.js" "$@"; }

PG_CLI=$P/node_modules/@microsoft/m365agentsplayground/cli.js
META=http://127.0.0.1:18080/v1/.well-known/openidconfiguration
NONCE=$(date +%s)-$$-$RANDOM
APP_ID=00000000-0000-0000-0000-00000000000011   # the Playground's default bot id (not a valid UUID)
TENANT=00000000-0000-0000-0000-0000000000001    # the Playground's default tenant
export APP_ID TENANT

# start_playground NAME PORT BOT_ENDPOINT: start a Playground (own cwd, events recording on) and wait for it.
start_playground() {
  local name=$1 port=$2 endpoint=$3 actual
  bg "pg-$name.log" env -C "$S/pg-$name" TEAMSAPPTESTER_BROWSER=none APPLICATION_INSIGHTS_NO_STATSBEAT=1 \
    M365_AGENTS_PLAYGROUND_LOGFILE="$L/pg-$name-internal.log" M365_AGENTS_PLAYGROUND_RECORDING_FILE="$S/rec-$name.log" \
    node "$PG_CLI" -e "$endpoint" -c msteams -p "$port" --disable-telemetry --enable-events-recording
  wait_log "$L/pg-$name.log" '^Listening on [0-9]+' 30 || fatal "Playground $name did not start (see $L/pg-$name.log)"
  actual=$(grep -oE '^Listening on [0-9]+' "$L/pg-$name.log" | head -n1 | grep -oE '[0-9]+$')
  [ "$actual" = "$port" ] || fatal "Playground $name listens on $actual, not $port (port busy?)"
  wait_http "http://127.0.0.1:$port/_debug/ping" 200 15 || fatal "Playground $name does not answer /_debug/ping"
}
# inbox NAME: dump `agentgate inbox` of scenario NAME into $S/inbox-NAME.jsonl (A: the built-in dev config, so
# data_dir comes from the environment; B: its config file). Run from $S/NAME, which holds no agentgate.toml.
inbox() {
  local name=$1 args=()
  if [ "$name" = a ]; then args=(env AGENTGATE__DATA_DIR="$S/a/data" "$BIN" inbox); else args=("$BIN" inbox --config "$S/b/agentgate.toml"); fi
  (cd "$S/$name" && "${args[@]}" --limit 1000) >"$S/inbox-$name.jsonl" 2>>"$L/inbox-$name.err"
}
# wait_inbox NAME COUNT SECONDS: poll the inbox until it holds at least COUNT entries.
wait_inbox() {
  local name=$1 n=$2 secs=$3
  for _ in $(seq $((secs * 4))); do
    inbox "$name" || true
    [ "$(grep -c . "$S/inbox-$name.jsonl" 2>/dev/null || true)" -ge "$n" ] && return 0
    sleep 0.25
  done
  return 1
}
# rec_settled NAME COUNT SECONDS: wait until the recording holds COUNT Playground->bot exchanges.
rec_settled() {

  for _ in $(seq $(($3 * 4))); do
    q rec "$S/rec-$1.log" "d.filter(r => /-> User Application/.test(r.direction)).length >= $2" >/dev/null 2>&1 && return 0
    sleep 0.25
  done
  return 1
}
# post NAME URL TOKEN|- BODY_FILE: POST an activity with curl; prints the HTTP status.
post() {
  local auth=()
  [ "$3" != - ] && auth=(-H "Authorization: Bearer $3")
  curl -s -o "$L/curl-$1.body" -w '%{http_code}' --max-time 10 -H 'Content-Type: application/json' "${auth[@]}" \
    --data-binary "@$4" "$2" || true
}
mint() { node "$J/fixture.js" mint "$@"; }

# ---------------------------------------------------------------------------- common: sandbox + OIDC fixture
log "scratch $S"
check "sandbox: only loopback is reachable (connect to 192.0.2.1 fails at once)" \
  bash -c '! timeout 3 bash -c "exec 3<>/dev/tcp/192.0.2.1/443" 2>/dev/null'

bg fixture.log node "$J/fixture.js" serve 18080
wait_log "$L/fixture.log" 'OIDC fixture on' 15 || fatal "the OIDC fixture did not start"
wait_http "$META" 200 10 || fatal "the OIDC fixture does not serve $META"

# ---------------------------------------------------------------------------- scenario A: dev mode, anonymous
log "scenario A: Playground -> agentgate serve --dev (anonymous)"
export E2E_TEXT_A="e2e A $NONCE: héllo \"quoted\" & <b>not html</b> ✓"
bg agentgate-a.log env -C "$S/a" AGENTGATE__DATA_DIR="$S/a/data" AGENTGATE__CLOUDS__PUBLIC__OPENID_METADATA_URL="$META" \
  "$BIN" serve --dev --bind 127.0.0.1:3978
wait_log "$L/agentgate-a.log" '^agentgate listening on http://127\.0\.0\.1:3978' 20 || fatal "agentgate (A) did not start"
wait_http http://127.0.0.1:3978/readyz 200 20 || fatal "agentgate (A) never became ready (signing keys from the fixture?)"
start_playground a 56150 http://127.0.0.1:3978/api/messages

if E2E_TEXT=$E2E_TEXT_A timeout 60 node "$S/drive.js" http://127.0.0.1:56150 >"$S/drive-a.json" 2>"$L/drive-a.log"; then
  pass "A: Playground HTTP API drive (install, message, card submit, Action.Execute, channel mention)"
else
  fail "A: Playground HTTP API drive (install, message, card submit, Action.Execute, channel mention)"
fi
rec_settled a 6 15 || true
wait_inbox a 6 15 || true
CARD_A=$(q json "$S/drive-a.json" 'd.card.body.id' 2>/dev/null || echo none)
export CARD_A
cp "$S/inbox-a.jsonl" "$L/" 2>/dev/null || true

check "A: agentgate answered every Playground activity 2xx (202, invoke 200) per the events recording" \
  q rec "$S/rec-a.log" 'd.filter(r => /-> User Application/.test(r.direction)).length >= 6 && d.filter(r => /-> User Application/.test(r.direction)).every(r => r.response.statusCode === (r.activityName === "invoke" ? 200 : 202))'
check "A: inbox has the installationUpdate (action add), auth dev-anonymous" \
  q inbox "$S/inbox-a.jsonl" 'd.some(e => e.activity_type === "installationUpdate" && e.b.action === "add" && e.auth === "dev-anonymous" && e.bot_app_id === env.APP_ID && e.tenant_id === env.TENANT)'
check "A: inbox has the conversationUpdate adding the bot, auth dev-anonymous" \
  q inbox "$S/inbox-a.jsonl" 'd.some(e => e.activity_type === "conversationUpdate" && e.auth === "dev-anonymous" && (e.b.membersAdded || []).some(m => m.id === env.APP_ID))'
check "A: inbox has the personal message with the exact text sent, auth dev-anonymous" \
  q inbox "$S/inbox-a.jsonl" 'd.some(e => e.activity_type === "message" && e.auth === "dev-anonymous" && e.b.text === env.E2E_TEXT_A && e.b.conversation.conversationType === "personal" && e.conversation_id === e.b.conversation.id)'
check "A: inbox has the Action.Submit (value only, replyToId = the card)" \
  q inbox "$S/inbox-a.jsonl" 'd.some(e => e.activity_type === "message" && e.auth === "dev-anonymous" && e.b.value && e.b.value.decision === "approve" && e.b.replyToId === env.CARD_A)'
check "A: Action.Execute invoke answered synchronously with agentgate's message invoke response" \
  q json "$S/drive-a.json" 'd.invoke.body.type === "application/vnd.microsoft.activity.message" && typeof d.invoke.body.value === "string" && d.invoke.body.value.length > 0'
check "A: agentgate's raw invoke response (per the recording) is 200 {statusCode:200, type: message}" \
  q rec "$S/rec-a.log" 'd.some(r => r.activityName === "invoke" && r.response.statusCode === 200 && r.response.body.statusCode === 200 && r.response.body.type === "application/vnd.microsoft.activity.message")'
check "A: inbox has the invoke adaptiveCard/action (verb deny)" \
  q inbox "$S/inbox-a.jsonl" 'd.some(e => e.activity_type === "invoke" && e.auth === "dev-anonymous" && e.b.name === "adaptiveCard/action" && e.b.value.action.verb === "deny")'
check "A: inbox has the channel @mention (conversation id with ;messageid=)" \
  q inbox "$S/inbox-a.jsonl" 'd.some(e => e.activity_type === "message" && e.conversation_id.includes(";messageid=") && e.b.text.includes(env.E2E_TEXT_A) && (e.b.entities || []).some(x => x.type === "mention"))'
check "A: every inbox entry is dev-anonymous, exactly 6, no duplicate activity ids" \
  q inbox "$S/inbox-a.jsonl" 'd.length === 6 && d.every(e => e.auth === "dev-anonymous") && new Set(d.map(e => e.activity_id)).size === d.length'

# ---------------------------------------------------------------------------- scenario B: authenticated
log "scenario B: Playground -> auth-proxy.js (mints RS256 tokens) -> agentgate serve --dev --config (tokens validated)"
export E2E_TEXT_B="e2e B $NONCE: signed ✓"
cat >"$S/b/agentgate.toml" <<EOF
data_dir = "$S/b/data"

[server]
bind = "127.0.0.1:3979"

[clouds.public]
openid_metadata_url = "$META"

[[bots]]
app_id = "$APP_ID"
display_name = "agentgate e2e (authenticated)"
allowed_tenants = ["$TENANT"]
require_endorsement = true
EOF
check "B: agentgate check --dev accepts the config" "$BIN" check --dev --config "$S/b/agentgate.toml"
bg agentgate-b.log "$BIN" serve --dev --config "$S/b/agentgate.toml"
wait_log "$L/agentgate-b.log" '^agentgate listening on http://127\.0\.0\.1:3979' 20 || fatal "agentgate (B) did not start"
wait_http http://127.0.0.1:3979/readyz 200 20 || fatal "agentgate (B) never became ready (signing keys from the fixture?)"
bg auth-proxy.log env LISTEN=3977 TARGET=http://127.0.0.1:3979/api/messages APP_ID="$APP_ID" node "$J/auth-proxy.js"
wait_log "$L/auth-proxy.log" '^auth proxy 127\.0\.0\.1:3977' 15 || fatal "auth-proxy.js did not start"
start_playground b 56152 http://127.0.0.1:3977/api/messages

if E2E_TEXT=$E2E_TEXT_B timeout 60 node "$S/drive.js" http://127.0.0.1:56152 >"$S/drive-b.json" 2>"$L/drive-b.log"; then
  pass "B: Playground HTTP API drive through the auth proxy"
else
  fail "B: Playground HTTP API drive through the auth proxy"
fi
rec_settled b 6 15 || true
wait_inbox b 6 15 || true
cp "$S/inbox-b.jsonl" "$L/" 2>/dev/null || true

check "B: agentgate answered every proxied Playground activity 2xx per the events recording" \
  q rec "$S/rec-b.log" 'd.filter(r => /-> User Application/.test(r.direction)).length >= 6 && d.filter(r => /-> User Application/.test(r.direction)).every(r => r.response.statusCode === (r.activityName === "invoke" ? 200 : 202))'
check "B: inbox has installationUpdate and conversationUpdate, auth botframework" \
  q inbox "$S/inbox-b.jsonl" '["installationUpdate", "conversationUpdate"].every(t => d.some(e => e.activity_type === t && e.auth === "botframework"))'
check "B: inbox has the personal message with the exact text sent, auth botframework" \
  q inbox "$S/inbox-b.jsonl" 'd.some(e => e.activity_type === "message" && e.auth === "botframework" && e.b.text === env.E2E_TEXT_B)'
check "B: inbox has the Action.Submit and the Action.Execute invoke, auth botframework" \
  q inbox "$S/inbox-b.jsonl" 'd.some(e => e.activity_type === "message" && e.auth === "botframework" && e.b.value && e.b.value.decision === "approve") && d.some(e => e.activity_type === "invoke" && e.auth === "botframework" && e.b.name === "adaptiveCard/action")'
check "B: Action.Execute invoke response came back through the proxy" \
  q json "$S/drive-b.json" 'd.invoke.body.type === "application/vnd.microsoft.activity.message" && d.invoke.body.value.length > 0'
check "B: every inbox entry is botframework-authenticated (6 entries, none dev-anonymous)" \
  q inbox "$S/inbox-b.jsonl" 'd.length === 6 && d.every(e => e.auth === "botframework")'
check "B: signing keys were fetched from the local fixture (metadata + /v1/keys)" \
  bash -c "grep -q 'GET /v1/.well-known/openidconfiguration' '$L/fixture.log' && grep -q 'GET /v1/keys' '$L/fixture.log'"

# Forged requests straight to agentgate B, with curl. The activity mirrors the Playground's message.
SU=http://localhost:56152/_connector
PC=$(q json "$S/drive-b.json" 'd.config.personalChat.id' 2>/dev/null || echo personal-chat)
activity() { # activity FILE MARKER SERVICE_URL TENANT
  node -e '
    const [file, marker, su, tenant] = process.argv.slice(1);
    require("fs").writeFileSync(file, JSON.stringify({ type: "message", id: "curl-" + marker, channelId: "msteams", serviceUrl: su,
      timestamp: new Date().toISOString(), text: marker, textFormat: "plain",
      from: { id: "user-id-0", name: "Alex Wilber", aadObjectId: "00000000-0000-0000-0000-0000000000020" },
      recipient: { id: process.env.APP_ID, name: "Test Bot" },
      conversation: { conversationType: "personal", tenantId: tenant, id: process.env.PC },
      channelData: { tenant: { id: tenant } } }));' "$@"
}
export PC
URL=http://127.0.0.1:3979/api/messages
# expect_status NAME WANT MARKER SERVICE_URL TENANT TOKEN|-
expect_status() {
  local name=$1 want=$2 marker=$3 su=$4 tenant=$5 token=$6 got
  activity "$S/$marker.json" "$marker" "$su" "$tenant"
  got=$(post "$marker" "$URL" "$token" "$S/$marker.json")
  echo "== $name: HTTP $got (want $want) body: $(cat "$L/curl-$marker.body" 2>/dev/null)" >>"$L/checks.log"
  if [ "$got" = "$want" ]; then pass "$name (HTTP $got)"; else fail "$name (HTTP $got, want $want)"; fi
}
GOOD=$(mint --aud "$APP_ID" --serviceurl "$SU")
expect_status "B/curl: control: a valid token for the bot is accepted" 202 "ok-$NONCE" "$SU" "$TENANT" "$GOOD"
expect_status "B/curl: token for the wrong audience is refused" 401 "wrongaud-$NONCE" "$SU" "$TENANT" "$(mint --aud wrong --serviceurl "$SU")"
expect_status "B/curl: no token with a non-loopback serviceUrl is refused" 401 "notoken-$NONCE" "https://smba.trafficmanager.net/amer/" "$TENANT" -
expect_status "B/curl: HS256 token (the Playground's teams-ai-v2-dotnet dummy kind) is refused" 401 "hs256-$NONCE" "$SU" "$TENANT" "$(mint --aud "$APP_ID" --serviceurl "$SU" --alg HS256)"
expect_status "B/curl: serviceurl claim that differs from the activity's is refused" 401 "sumismatch-$NONCE" "$SU" "$TENANT" "$(mint --aud "$APP_ID" --serviceurl http://localhost:56999/_connector)"
expect_status "B/curl: expired token (beyond the 300 s skew) is refused" 401 "expired-$NONCE" "$SU" "$TENANT" "$(mint --aud "$APP_ID" --serviceurl "$SU" --exp -900)"
expect_status "B/curl: token signed by an unknown kid is refused" 401 "kid-$NONCE" "$SU" "$TENANT" "$(mint --aud "$APP_ID" --serviceurl "$SU" --kid other-kid)"
expect_status "B/curl: valid token but a tenant off the allow-list is refused" 403 "tenant-$NONCE" "$SU" "11111111-2222-3333-4444-555555555555" "$GOOD"
expect_status "B/curl: activity serviceUrl with a trailing slash matches the claim without one" 202 "slash-$NONCE" "$SU/" "$TENANT" "$GOOD"
redelivered=$(post "redeliver-$NONCE" "$URL" "$GOOD" "$S/ok-$NONCE.json")
if [ "$redelivered" = 202 ]; then pass "B/curl: a redelivery of the same activity is acknowledged (HTTP 202)"; else fail "B/curl: a redelivery of the same activity is acknowledged (HTTP $redelivered, want 202)"; fi
inbox b || true
cp "$S/inbox-b.jsonl" "$L/inbox-b-final.jsonl" 2>/dev/null || true
export NONCE
check "B/curl: the accepted requests are in the inbox once each (botframework), no refused one is" \
  q inbox "$S/inbox-b.jsonl" '((mine) => mine.length === 2 && ["ok-", "slash-"].every(p => mine.filter(e => e.b.text === p + env.NONCE && e.auth === "botframework").length === 1))(d.filter(e => typeof e.b.text === "string" && e.b.text.endsWith("-" + env.NONCE)))'

summary
[ "$FAILED" -eq 0 ]
