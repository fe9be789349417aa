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
#     Scenario A2 (A's gateway, no host connected): a user's edit and deletion of waiting messages, a reaction and a
#     feedback, sent through the Playground's custom-activity and invoke APIs: the edit patches the waiting entry,
#     the deletion withdraws it, the reaction and the feedback are entries, the feedback invoke is answered 200 with
#     an empty body and audited.
#     Scenario C (outbound, dev, config file): Playground -> `agentgate serve --dev --config C.toml` (no bot
#     credential: in --dev the worker presents a placeholder token, which the Playground's mock Connector accepts),
#     then `agentgate send --config C.toml` queues into the durable outbox and the gateway's worker delivers to the
#     Playground's loopback Connector: a reply (--reply-to the inbound message), a proactive message (--user
#     --tenant), an Adaptive Card (Action.Submit + Action.Execute), its submit and Action.Execute round trips
#     (-> `agentgate inbox`), an update (--update), a typing indicator (--typing) and, once `agentgate send --help`
#     lists --stream, a streamed reply (else SKIP). What the user sees is read from the Playground's conversation
#     WebSocket (/_ws_conversation/v1/conversations/stream, recorded to a JSON-lines file); every send must be
#     `delivered` in `agentgate outbox`, and `agentgate audit --verify` must pass.
#  4. prints PASS/FAIL (and SKIP) per check and `e2e: N passed, M failed`; stops every process it started, by PID.
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
mkdir -p "$L" "$S/a" "$S/b" "$S/c" "$S/pg-a" "$S/pg-b" "$S/pg-c"
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
skip() { echo "SKIP: $1"; }
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
cat >"$S/drive-changes.js" <<'EOF'
// Users' edits and deletions, a reaction and a feedback, through the Playground: its custom-activity API
// (/_internal/v1/customActivities: the Playground sends the activity to the bot) for messageUpdate / messageDelete /
// messageReaction (shapes of teams.ts message-update.ts, message-delete.ts, message-reaction.ts), and its invoke API
// for message/submitAction (the feedback form). No host is connected, so nothing was delivered yet: the edit must
// patch the waiting entry and the deletion withdraw it. usage: node drive-changes.js BASE_URL NONCE RATED_MESSAGE_ID
const [BASE, NONCE, RATED] = process.argv.slice(2);
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
  const me = cfg.currentUser.id, pc = cfg.personalChat.id;
  const tpl = (await j('GET', `/_internal/v1/customActivities/template?conversationId=${encodeURIComponent(pc)}`)).body;
  out.template = tpl;
  const base = (tpl && typeof tpl === 'object' && (tpl.activity || tpl)) || {};
  const mk = extra => ({ ...base, ...extra,
    from: { ...(base.from || {}), id: me, aadObjectId: cfg.currentUser.aadObjectId || (base.from || {}).aadObjectId },
    conversation: { ...(base.conversation || {}), id: pc, conversationType: 'personal' },
    channelData: { ...(base.channelData || {}), ...(extra.channelData || {}) } });
  const send = a => j('POST', '/_internal/v1/customActivities', a);
  const edited = `e2e-edited-${NONCE}`, deleted = `e2e-deleted-${NONCE}`;
  out.sent = [];
  for (const a of [
    mk({ type: 'message', id: edited, text: `to be edited ${NONCE}` }),
    mk({ type: 'message', id: deleted, text: `secret to be deleted ${NONCE}` }),
  ]) { out.sent.push(a); await send(a); await sleep(300); }
  await sleep(700);
  const update = mk({ type: 'messageUpdate', id: edited, text: `edited ${NONCE}`, channelData: { eventType: 'editMessage' } });
  const del = mk({ type: 'messageDelete', id: deleted, channelData: { eventType: 'softDeleteMessage' } });
  delete del.text;
  const reaction = mk({ type: 'messageReaction', id: `e2e-reaction-${NONCE}`, replyToId: RATED, reactionsAdded: [{ type: 'like' }] });
  delete reaction.text;
  for (const a of [update, del, reaction]) { out.sent.push(a); await send(a); await sleep(300); }
  out.feedback = await j('POST', '/_conversation/v1/invoke', { name: 'message/submitAction', from: { id: me }, conversation: { id: pc },
    replyToId: RATED, value: { actionName: 'feedback', actionValue: { reaction: 'dislike', feedback: JSON.stringify({ feedbackText: `e2e comment ${NONCE}` }) } } });
  console.log(JSON.stringify(out));
})().catch(e => { console.error('driver failed:', e); process.exit(1); });
EOF
cat >"$S/q.js" <<'EOF'
// node q.js KIND FILE EXPR: evaluate EXPR with `d` = the parsed FILE and `env` = process.env; print the result;
// exit 1 when it is false/null/undefined. KIND: json | jsonl (JSON lines) | inbox (JSON lines; each entry gets
// `b` = its parsed body) | rec (the Playground's events-recording file: JSON records separated by ---).
const fs = require('fs'); const [kind, file, expr] = process.argv.slice(2);
const text = fs.existsSync(file) ? fs.readFileSync(file, 'utf8') : '';
let d;
if (kind === 'json') d = JSON.parse(text);
else if (kind === 'jsonl') d = text.split('\n').filter(l => l.trim()).map(l => JSON.parse(l));
else if (kind === 'inbox') d = text.split('\n').filter(l => l.trim()).map(l => { const e = JSON.parse(l); try { e.b = JSON.parse(e.body); } catch { e.b = {}; } return e; });
else d = text.split(/\n---\n?/).filter(s => s.trim()).map(s => JSON.parse(s));
const v = new Function('d', 'env', 'require', `return (${expr});`)(d, process.env, require);
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
# data_dir comes from the environment; B, C: their config file). Run from $S/NAME, which holds no agentgate.toml.
inbox() {
  local name=$1 args=()
  if [ "$name" = a ]; then args=(env AGENTGATE__DATA_DIR="$S/a/data" "$BIN" inbox); else args=("$BIN" inbox --config "$S/$name/agentgate.toml"); fi
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
# eventually SECONDS CMD...: retry CMD every 0.25 s until it succeeds (its output is kept only from the last try).
eventually() {
  local secs=$1 out; shift
  for _ in $(seq $((secs * 4))); do
    if out=$("$@" 2>&1); then printf '%s\n' "$out"; return 0; fi
    sleep 0.25
  done
  printf '%s\n' "$out"
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
only_lo() { [ "$(ip -o link show | grep -cv ' lo:')" = 0 ]; }
check "sandbox: the network namespace has no interface but lo" only_lo

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

# ---------------------------------------------------------------------------- scenario A2: edits, deletions, reactions, feedback
log "scenario A2: users' edits and deletions, a reaction and feedback, through the Playground (A's gateway, no host)"
export NONCE
if timeout 60 node "$S/drive-changes.js" http://127.0.0.1:56150 "$NONCE" "$CARD_A" >"$S/drive-a2.json" 2>"$L/drive-a2.log"; then
  pass "A2: Playground custom activities (messageUpdate, messageDelete, messageReaction) and the message/submitAction invoke"
else
  fail "A2: Playground custom activities (messageUpdate, messageDelete, messageReaction) and the message/submitAction invoke"
fi
rec_settled a 12 15 || true
sleep 1
inbox a || true
cp "$S/inbox-a.jsonl" "$L/inbox-a2.jsonl" 2>/dev/null || true
cp "$S/drive-a2.json" "$L/" 2>/dev/null || true
# shellcheck disable=SC2016 # a JavaScript template literal, expanded by node, not the shell
check "A2: the edit patched the waiting entry in place (its text is the edited one; no separate messageUpdate entry)" \
  q inbox "$S/inbox-a.jsonl" 'd.some(e => e.activity_id === `e2e-edited-${env.NONCE}` && e.b.text === `edited ${env.NONCE}`) && !d.some(e => e.activity_type === "messageUpdate")'
# shellcheck disable=SC2016 # a JavaScript template literal, expanded by node, not the shell
check "A2: the deletion withdrew the waiting entry: neither it nor its text is offered to a host" \
  q inbox "$S/inbox-a.jsonl" '!d.some(e => e.activity_id.startsWith(`e2e-deleted-${env.NONCE}`) || e.body.includes(`secret to be deleted ${env.NONCE}`)) && !d.some(e => e.activity_type === "messageDelete")'
# shellcheck disable=SC2016 # a JavaScript template literal, expanded by node, not the shell
check "A2: the Playground delivered both the deleted message and its deletion to agentgate (202 each, per the recording)" \
  q rec "$S/rec-a.log" 'd.filter(r => /-> User Application/.test(r.direction) && JSON.stringify(r).includes(`e2e-deleted-${env.NONCE}`) && r.response.statusCode === 202).length >= 2'
check "A2: the reaction is an inbox entry naming the message (replyToId) and the reaction (like)" \
  q inbox "$S/inbox-a.jsonl" 'd.some(e => e.activity_type === "messageReaction" && e.b.replyToId === env.CARD_A && (e.b.reactionsAdded || []).some(r => r.type === "like"))'
check "A2: the feedback invoke is an inbox entry (dislike, with its comment)" \
  q inbox "$S/inbox-a.jsonl" 'd.some(e => e.activity_type === "invoke" && e.b.name === "message/submitAction" && e.b.value.actionValue.reaction === "dislike")'
check "A2: agentgate answered the feedback invoke 200 with an empty body (per the recording)" \
  q rec "$S/rec-a.log" 'd.some(r => r.activityName === "invoke" && /submitAction/.test(JSON.stringify(r)) && r.response.statusCode === 200 && (r.response.body === undefined || r.response.body === null || r.response.body === ""))'
check "A2: the feedback is in the audit log (action feedback, outcome dislike)" \
  bash -c "cd '$S/a' && AGENTGATE__DATA_DIR='$S/a/data' '$BIN' audit --limit 100 | grep '\"feedback\"' | grep -q dislike"

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
policy.dm = "open"        # the Playground user may reach the agent (the default is an allow-list)
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

# ---------------------------------------------------------------------------- scenario C: outbound (dev, config file)
log "scenario C: agentgate send -> outbox -> worker -> the Playground's mock Connector (dev, config file)"
CFG_C=$S/c/agentgate.toml
cat >"$CFG_C" <<EOF
data_dir = "$S/c/data"

[server]
bind = "127.0.0.1:3980"

[clouds.public]
openid_metadata_url = "$META"

[[bots]]
app_id = "$APP_ID"
display_name = "agentgate e2e (outbound)"
allowed_tenants = ["$TENANT"]
policy.dm = "open"

[outbound]
poll_interval_ms = 50
EOF
check "C: agentgate check --dev accepts the config (no bot credential: dev placeholder token)" "$BIN" check --dev --config "$CFG_C"
bg agentgate-c.log "$BIN" serve --dev --config "$CFG_C"
wait_log "$L/agentgate-c.log" '^agentgate listening on http://127\.0\.0\.1:3980' 20 || fatal "agentgate (C) did not start"
wait_http http://127.0.0.1:3980/readyz 200 20 || fatal "agentgate (C) never became ready"
start_playground c 56154 http://127.0.0.1:3980/api/messages
PG_C=http://127.0.0.1:56154

# The Playground's conversation stream (what its UI renders) recorded as JSON lines, one per event.
cat >"$S/ws-watch.js" <<'EOF'
// node ws-watch.js WS_URL FILE: append every event of the Playground's conversation stream to FILE (JSON lines).
const WebSocket = require(require.resolve('ws', { paths: [process.env.E2E_PEERS_CACHE] }));
const fs = require('fs'); const [url, file] = process.argv.slice(2);
const ws = new WebSocket(url);
ws.on('open', () => console.log('ws open'));
ws.on('message', d => { let line; try { line = JSON.stringify(JSON.parse(d.toString())); } catch { line = JSON.stringify({ raw: d.toString() }); } fs.appendFileSync(file, line + '\n'); });
ws.on('close', () => { console.log('ws closed'); process.exit(0); });
ws.on('error', e => { console.error('ws error:', e.message); process.exit(1); });
EOF
# One Playground HTTP API call per run (what its web UI calls); prints {status, body}.
cat >"$S/pg.js" <<'EOF'
// node pg.js BASE config | install CONV | message CONV TEXT | submit CONV REPLY_TO VALUE_JSON | invoke CONV REPLY_TO ACTION_JSON
const [BASE, cmd, conv, a1, a2] = process.argv.slice(2); const ME = process.env.PG_USER || 'user-id-0';
const call = async (method, path, body) => {
  const r = await fetch(BASE + path, { method, headers: { 'content-type': 'application/json' }, body: body && JSON.stringify(body), signal: AbortSignal.timeout(15000) });
  const t = await r.text(); let v; try { v = JSON.parse(t); } catch { v = t; }
  console.log(JSON.stringify({ status: r.status, body: v })); if (r.status >= 300) process.exit(1);
};
const c = encodeURIComponent(conv || '');
({
  config: () => call('GET', '/_internal/v1/config'),
  install: () => call('POST', `/_debug/conversation/${c}/installation`, {}),
  message: () => call('POST', `/_conversation/v1/conversations/${c}/messages`, { from: { id: ME }, text: a1, textFormat: 'plain' }),
  submit: () => call('POST', '/_conversation/v1/submit', { conversation: { id: conv }, from: { id: ME }, replyToId: a1, value: JSON.parse(a2) }),
  invoke: () => call('POST', '/_conversation/v1/invoke', { name: 'adaptiveCard/action', from: { id: ME }, conversation: { id: conv }, replyToId: a1, value: { action: JSON.parse(a2) } }),
}[cmd] || (() => { console.error('unknown command ' + cmd); process.exit(2); }))().catch(e => { console.error(String(e)); process.exit(1); });
EOF
pg() { node "$S/pg.js" "$PG_C" "$@"; }
WS_C=$S/ws-c.jsonl
: >"$WS_C"
bg ws-c.log node "$S/ws-watch.js" "ws://127.0.0.1:56154/_ws_conversation/v1/conversations/stream" "$WS_C"
wait_log "$L/ws-c.log" '^ws open' 15 || fatal "could not open the Playground's conversation WebSocket"

pg config >"$S/pg-c-config.json" 2>>"$L/pg-c-api.log" || fatal "Playground C: GET /_internal/v1/config failed"
PC_C=$(q json "$S/pg-c-config.json" 'd.body.config.personalChat.id') || fatal "Playground C has no personal chat id"
PG_USER=$(q json "$S/pg-c-config.json" 'd.body.config.currentUser.id') || fatal "Playground C has no current user"
export PC_C PG_USER
export E2E_TEXT_C="e2e C $NONCE: please answer ✓"
if pg install "$PC_C" >>"$L/pg-c-api.log" 2>&1 && sleep 0.5 && pg message "$PC_C" "$E2E_TEXT_C" >>"$L/pg-c-api.log" 2>&1; then
  pass "C: Playground install + personal message"
else
  fail "C: Playground install + personal message"
fi
# inbox_c_has EXPR: a fresh `agentgate inbox` of C satisfies EXPR (see q.js, kind inbox).
inbox_c_has() { inbox c && q inbox "$S/inbox-c.jsonl" "$1"; }
check "C: the inbound message is in the inbox (dev-anonymous)" eventually 15 \
  inbox_c_has 'd.some(e => e.activity_type === "message" && e.b.text === env.E2E_TEXT_C && e.auth === "dev-anonymous")'
inbox c || true
INBOUND_C=$(q inbox "$S/inbox-c.jsonl" 'd.find(e => e.activity_type === "message" && e.b.text === env.E2E_TEXT_C).activity_id' 2>/dev/null || echo none)

# send_c ARGS...: `agentgate send --config C.toml ARGS` (stdin passes through); prints the outbox id.
send_c() {
  local out
  out=$("$BIN" send --config "$CFG_C" "$@" 2>>"$L/send-c.err") || return 1
  printf '%s\n' "$out" >>"$L/send-c.log"
  grep -oE 'outbox #[0-9]+' <<<"$out" | head -n1 | grep -oE '[0-9]+'
}
# settled ID: the outbox entry has reached a final state (its JSON is left in $S/outbox-ID.json).
settled() {
  "$BIN" outbox --config "$CFG_C" --id "$1" >"$S/outbox-$1.json" 2>>"$L/outbox-c.err" &&
    q json "$S/outbox-$1.json" '["delivered", "dead", "uncertain"].includes(d.state)'
}
SENT_C=0
# deliver NAME ARGS...: queue a send, wait until the worker settled it; PASS when `delivered` with a result id.
# The outbox id is left in $OID.
OID=none
deliver() {
  local name=$1; shift
  OID=none
  SENT_C=$((SENT_C + 1))
  if OID=$(send_c "$@") && eventually 20 settled "$OID" >/dev/null &&
    q json "$S/outbox-$OID.json" 'd.state === "delivered" && typeof d.result_id === "string"' >/dev/null; then
    pass "$name: queued, then delivered by the worker"
  else
    fail "$name: queued, then delivered by the worker (outbox: $(cat "$S/outbox-$OID.json" 2>/dev/null || echo none))"
  fi
  echo "== $name: outbox #$OID $(cat "$S/outbox-$OID.json" 2>/dev/null)" >>"$L/checks.log"
}
rid() { q json "$S/outbox-$1.json" 'd.result_id' 2>/dev/null || echo none; }

# 1. a text reply to the inbound message
export REPLY_TEXT="reply $NONCE: hello from agentgate ✓"
deliver "C: text reply (--reply-to the inbound message)" --conversation "$PC_C" --reply-to "$INBOUND_C" --text "$REPLY_TEXT"
REPLY_ID=$(rid "$OID"); export REPLY_ID
check "C: the Playground shows the reply in the personal chat (WebSocket createMessage, id = result_id)" eventually 10 \
  q jsonl "$WS_C" 'd.some(e => e.action === "createMessage" && e.actionConversationId === env.PC_C && e.message.from.id === env.APP_ID && e.message.text === env.REPLY_TEXT && e.message.messageId === env.REPLY_ID)'
export INBOUND_C
check "C: the reply went to the mock Connector's reply path (POST v3/conversations/{conv}/activities/{inbound id} -> 201)" \
  q rec "$S/rec-c.log" 'd.some(r => /User Application ->/.test(r.direction) && r.request.method === "POST" && r.request.url.endsWith("/activities/" + encodeURIComponent(env.INBOUND_C)) && r.response.statusCode === 201 && r.request.body.text === env.REPLY_TEXT)'

# 2. a proactive message: POST v3/conversations (1:1 with the user), then the message into it
export PRO_TEXT="proactive $NONCE: a message nobody asked for"
deliver "C: proactive message (--user $PG_USER --tenant)" --user "$PG_USER" --tenant "$TENANT" --text "$PRO_TEXT"
PRO_RESULT=$(rid "$OID")
export PRO_CONV=${PRO_RESULT%%|*} PRO_ID=${PRO_RESULT#*|}
check "C: the Playground shows the proactive message in the 1:1 chat POST v3/conversations returned (result_id = conversation|activity)" eventually 10 \
  q jsonl "$WS_C" 'env.PRO_CONV.length > 0 && d.some(e => e.action === "createMessage" && e.actionConversationId === env.PRO_CONV && e.message.from.id === env.APP_ID && e.message.text === env.PRO_TEXT && e.message.messageId === env.PRO_ID)'
check "C: the proactive send created the 1:1 first (POST v3/conversations: the user as member, the tenant -> 201)" \
  q rec "$S/rec-c.log" 'd.some(r => r.request.method === "POST" && /\/_connector\/v3\/conversations$/.test(r.request.url) && r.response.statusCode === 201 && r.request.body.members[0].id === env.PG_USER && r.request.body.tenantId === env.TENANT && r.request.body.isGroup === false)'
if [ "$PRO_CONV" = "$PC_C" ]; then log "proactive: the Playground reused the existing personal chat $PC_C"; else log "proactive: the Playground opened a new 1:1 chat $PRO_CONV (existing personal chat: $PC_C)"; fi

# 3. an Adaptive Card with Action.Submit and Action.Execute
cat >"$S/card.json" <<EOF
{
  "type": "AdaptiveCard",
  "\$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
  "version": "1.4",
  "body": [{"type": "TextBlock", "text": "Run the tool call? ($NONCE)", "wrap": true}],
  "actions": [
    {"type": "Action.Submit", "title": "Approve", "data": {"decision": "approve", "nonce": "$NONCE"}},
    {"type": "Action.Execute", "title": "Deny", "verb": "deny", "data": {"nonce": "$NONCE"}}
  ]
}
EOF
deliver "C: Adaptive Card (--card, Action.Submit + Action.Execute)" --conversation "$PC_C" --card "$S/card.json"
CARD_ID=$(rid "$OID"); export CARD_ID
check "C: the Playground shows the card (adaptive attachment with both actions, id = result_id)" eventually 10 \
  q jsonl "$WS_C" 'd.some(e => e.action === "createMessage" && e.actionConversationId === env.PC_C && e.message.messageId === env.CARD_ID && (e.message.attachments || []).some(a => a.contentType === "application/vnd.microsoft.card.adaptive" && a.content.body[0].text.includes(env.NONCE) && ["Action.Submit", "Action.Execute"].every(t => a.content.actions.some(x => x.type === t))))'

# 4. the card's Action.Submit and Action.Execute, as the Playground's UI sends them
if pg submit "$PC_C" "$CARD_ID" "{\"decision\":\"approve\",\"nonce\":\"$NONCE\"}" >"$S/submit-c.json" 2>>"$L/pg-c-api.log"; then
  pass "C: Playground card submit (Action.Submit) accepted by its API"
else
  fail "C: Playground card submit (Action.Submit) accepted by its API"
fi
check "C: the submit lands in agentgate inbox (message with value, replyToId = the card)" eventually 15 \
  inbox_c_has 'd.some(e => e.activity_type === "message" && e.b.value && e.b.value.nonce === env.NONCE && e.b.value.decision === "approve" && e.b.replyToId === env.CARD_ID)'
if pg invoke "$PC_C" "$CARD_ID" "{\"type\":\"Action.Execute\",\"title\":\"Deny\",\"verb\":\"deny\",\"data\":{\"nonce\":\"$NONCE\"}}" >"$S/invoke-c.json" 2>>"$L/pg-c-api.log"; then
  pass "C: Playground Action.Execute invoke accepted by its API"
else
  fail "C: Playground Action.Execute invoke accepted by its API"
fi
check "C: Action.Execute answered with agentgate's invoke response (HTTP 200, message type)" \
  q json "$S/invoke-c.json" 'd.status === 200 && d.body.type === "application/vnd.microsoft.activity.message" && typeof d.body.value === "string" && d.body.value.length > 0'
check "C: agentgate's raw answer to the adaptiveCard/action invoke (per the recording) is 200" eventually 10 \
  q rec "$S/rec-c.log" 'd.some(r => r.activityName === "invoke" && r.response.statusCode === 200 && r.response.body.statusCode === 200)'
check "C: the Action.Execute invoke lands in agentgate inbox (adaptiveCard/action, verb deny, replyToId = the card)" eventually 15 \
  inbox_c_has 'd.some(e => e.activity_type === "invoke" && e.b.name === "adaptiveCard/action" && e.b.value.action.verb === "deny" && e.b.value.action.data.nonce === env.NONCE && e.b.replyToId === env.CARD_ID)'

# 5. an update of the reply
export EDIT_TEXT="reply $NONCE: edited by agentgate ✎"
deliver "C: update of the reply (--update its result_id)" --conversation "$PC_C" --update "$REPLY_ID" --text "$EDIT_TEXT"
check "C: the Playground shows the edited reply (WebSocket updateMessage of the same message id)" eventually 10 \
  q jsonl "$WS_C" 'd.some(e => e.action === "updateMessage" && e.actionConversationId === env.PC_C && e.message.messageId === env.REPLY_ID && e.message.text === env.EDIT_TEXT)'
check "C: the mock Connector recorded the update as PUT v3/conversations/{conv}/activities/{reply id} -> 200" \
  q rec "$S/rec-c.log" 'd.some(r => r.request.method === "PUT" && r.request.url.endsWith("/activities/" + env.REPLY_ID) && r.response.statusCode === 200 && r.request.body.text === env.EDIT_TEXT)'

# 6. a typing indicator
deliver "C: typing indicator (--typing)" --conversation "$PC_C" --typing
check "C: the Playground shows the bot typing in the personal chat (WebSocket typing)" eventually 10 \
  q jsonl "$WS_C" 'd.some(e => e.action === "typing" && e.actionConversationId === env.PC_C)'

# 7. a streamed reply, once `agentgate send` has --stream (the text comes from stdin, without a final newline)
if "$BIN" send --help 2>/dev/null | grep -q -- '--stream'; then
  export STREAM_TEXT="stream $NONCE: one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen twenty, and done ✓"
  deliver "C: streamed reply (--stream, text from stdin)" --conversation "$PC_C" --stream --stream-interval-ms 300 < <(printf '%s' "$STREAM_TEXT")
  export STREAM_RESULT; STREAM_RESULT=$(rid "$OID")
  # The stream as the user sees it: the bubble the first streaminfo activity created, then updates of that same
  # bubble with growing (cumulative) text, at least one `streaming` update, a `final` one with the whole text,
  # and no second bubble carrying the whole text.
  cat >"$S/stream-view.js" <<'EOF'
module.exports = (ev, env) => {
  const start = ev.findIndex(e => e.action === 'createMessage' && e.actionConversationId === env.PC_C && e.message.from.id === env.APP_ID && (e.message.text || '').startsWith('stream ' + env.NONCE));
  if (start < 0) return null;
  const id = ev[start].message.messageId;
  const ups = ev.slice(start + 1).filter(e => e.action === 'updateMessage' && e.message.messageId === id);
  const texts = [ev[start].message].concat(ups.map(e => e.message)).map(m => m.text || '');
  const types = [ev[start].message].concat(ups.map(e => e.message)).map(m => (m.streamEntity || {}).streamType);
  const dup = ev.some((e, i) => i !== start && e.action === 'createMessage' && e.message.text === env.STREAM_TEXT);
  return { id, texts, types, dup };
};
EOF
  check "C: the Playground shows the stream: one bubble, streaming updates with growing text, then the final with the whole text" eventually 10 \
    q jsonl "$WS_C" '((v) => v !== null && !v.dup && v.texts.length >= 3 && v.texts[0].length < env.STREAM_TEXT.length && v.texts.every((t, i) => i === 0 || t.startsWith(v.texts[i - 1])) && v.types.slice(1, -1).includes("streaming") && v.types[v.types.length - 1] === "final" && v.texts[v.texts.length - 1] === env.STREAM_TEXT)(require(env.E2E_SCRATCH + "/stream-view.js")(d, env))'
  check "C: the streamed reply's outbox result_id is the id of the message the user sees" \
    q jsonl "$WS_C" '((v) => v !== null && v.id === env.STREAM_RESULT)(require(env.E2E_SCRATCH + "/stream-view.js")(d, env))'
else
  skip "C: streamed reply: \`agentgate send --help\` does not list --stream yet"
fi

# 8. the books: every send delivered exactly once, the audit chain intact
export SENT_C
outbox_all_delivered() {
  "$BIN" outbox --config "$CFG_C" --limit 1000 >"$S/outbox-c.jsonl" &&
    q jsonl "$S/outbox-c.jsonl" 'd.length === Number(env.SENT_C) && d.every(e => e.state === "delivered" && e.attempts === 1 && (e.result_id || e.op.op === "stream" || (e.op.activity || {}).type === "typing"))'
}
metrics_only_delivered() {
  curl -s --max-time 5 http://127.0.0.1:3980/metrics >"$S/metrics-c.txt" &&
    grep -qx "agentgate_outbound_attempts_total{outcome=\"delivered\"} $SENT_C" "$S/metrics-c.txt" &&
    ! grep -E '^agentgate_outbound_attempts_total\{outcome="(retried|uncertain|dead)"\} [1-9]' "$S/metrics-c.txt"
}
audit_per_send() {
  "$BIN" audit --config "$CFG_C" --limit 1000 >"$S/audit-c.jsonl" &&
    q jsonl "$S/audit-c.jsonl" '["queued", "delivered"].every(o => d.filter(e => e.outcome === o).length === Number(env.SENT_C))'
}
check "C: agentgate outbox: all $SENT_C entries delivered in one attempt, each with a result id (typing: none; stream: checked above)" outbox_all_delivered
check "C: /metrics counts $SENT_C delivered outbound attempts, no retry/uncertain/dead" metrics_only_delivered
check "C: agentgate audit --verify: the chain is intact" "$BIN" audit --verify --config "$CFG_C"
check "C: the audit log has one queued and one delivered event per send" audit_per_send
cp "$WS_C" "$S/inbox-c.jsonl" "$L/" 2>/dev/null || true

summary
[ "$FAILED" -eq 0 ]
