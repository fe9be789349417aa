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
#     Scenario D (an MCP host, authenticated): Playground -> auth proxy -> `agentgate serve --dev --config D.toml`,
#     and a host (mcp.js, a minimal Streamable HTTP client) on the gateway's /mcp: `send_file` in the 1:1 chat
#     (the consent card; the person's accept and decline as fileConsent/invoke through the Playground's
#     custom-activity API; the upload in Content-Range fragments to a loopback upload sink, an allowed
#     `files.endpoints` entry; the file info card; the host's file_consent / file_upload events), a stream in the
#     group chat and in a channel thread (one message updated in place), a quoted reply, a reply into a channel
#     thread, the bot's own reaction, a tool call that waits for an owner's approval and Claude Code's permission
#     relay (the approver answers in the 1:1 chat). What the Playground does not support (fileConsent/invoke in its
#     invoke API, reactions, members by AAD object id hence targeted cards, one id for a text + card message) is a
#     SKIP line quoting its answer, followed by a check of what agentgate does about it.
#  4. prints PASS/FAIL (and SKIP) per check and `e2e: N passed, M failed`; stops every process it started, by PID.
#
# Environment: AGENTGATE_E2E_SHARED (the shared dir, default ../shared; e.g. for a git worktree elsewhere),
# AGENTGATE_E2E_PEERS_CACHE (npm install dir, default /tmp/agentgate-e2e-peers-<hash>),
# AGENTGATE_E2E_KEEP=1 (keep the scratch dir and logs even on success).
set -euo pipefail

SELF=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")
ROOT=$(cd "$(dirname "$SELF")/.." && pwd)
SHARED=${AGENTGATE_E2E_SHARED:-$ROOT/../shared}
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
mkdir -p "$L" "$S/a" "$S/b" "$S/c" "$S/d" "$S/pg-a" "$S/pg-b" "$S/pg-c" "$S/pg-d"
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
// node pg.js BASE config | install CONV | message CONV TEXT | mention CONV TEXT (the text after an @mention of the bot)
//   | submit CONV REPLY_TO VALUE_JSON | invoke CONV REPLY_TO ACTION_JSON | invoke-named NAME CONV REPLY_TO VALUE_JSON
//   | custom CONV FILE (the activity in FILE over the Playground's template for CONV, through its custom-activity API)
const [BASE, cmd, conv, a1, a2, a3] = process.argv.slice(2); const ME = process.env.PG_USER || 'user-id-0';
const get = async path => (await (await fetch(BASE + path, { signal: AbortSignal.timeout(15000) })).json());
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
  mention: async () => {
    const bot = (await get('/_internal/v1/config')).config.bot, at = `<at>${bot.name}</at>`;
    return call('POST', `/_conversation/v1/conversations/${c}/messages`, { from: { id: ME }, text: `${at} ${a1}`, textFormat: 'plain', mentions: [{ mentioned: { id: bot.id }, text: at }] });
  },
  submit: () => call('POST', '/_conversation/v1/submit', { conversation: { id: conv }, from: { id: ME }, replyToId: a1, value: JSON.parse(a2) }),
  invoke: () => call('POST', '/_conversation/v1/invoke', { name: 'adaptiveCard/action', from: { id: ME }, conversation: { id: conv }, replyToId: a1, value: { action: JSON.parse(a2) } }),
  'invoke-named': () => call('POST', '/_conversation/v1/invoke', { name: conv, from: { id: ME }, conversation: { id: a1 }, replyToId: a2, value: JSON.parse(a3) }),
  custom: async () => {
    const base = await get(`/_internal/v1/customActivities/template?conversationId=${c}`), extra = JSON.parse(require('fs').readFileSync(a1, 'utf8'));
    return call('POST', '/_internal/v1/customActivities', { ...base, ...extra, from: { ...base.from, ...(extra.from || {}) }, conversation: { ...base.conversation, ...(extra.conversation || {}) } });
  },
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


# ---------------------------------------------------------------------------- scenario D: an MCP host on /mcp
# Playground -> auth-proxy.js -> `agentgate serve --dev --config D.toml` (authenticated: only authenticated clicks
# answer an approval); a host drives the gateway's /mcp (Streamable HTTP, bearer token) with mcp.js: send_file and
# the file consent flow (the upload goes to a loopback upload sink, an allowed files.endpoints entry), streams in the
# group chat and in a channel thread, a quoted reply, a reply into a channel thread, the bot's own reaction and a
# tool call that waits for an owner's approval in Teams. What the Playground does not support is reported as SKIP
# with its answer.
log "scenario D: an MCP host on /mcp -> agentgate serve --dev --config D.toml (Playground -> auth proxy -> agentgate)"
CFG_D=$S/d/agentgate.toml
MCP_D=http://127.0.0.1:3982/mcp
SINK=http://127.0.0.1:18091
APPROVER=00000000-0000-0000-0000-0000000000020   # the Playground's current user (Alex Wilber), by AAD object id
E2E_MCP_TOKEN=e2e-$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')
export E2E_MCP_TOKEN APPROVER SINK
cat >"$CFG_D" <<EOF
data_dir = "$S/d/data"

[server]
bind = "127.0.0.1:3981"

[clouds.public]
openid_metadata_url = "$META"

[mcp]
bind = "127.0.0.1:3982"

[[mcp.tokens]]
name = "e2e"
token = "env:E2E_MCP_TOKEN"
approve = ["send_message"]   # every send_message waits for an owner's Allow in Teams

[files]
endpoints = ["$SINK/upload"]   # the loopback upload sink stands in for OneDrive's upload sessions
upload_chunk_bytes = 327680    # the smallest fragment OneDrive takes: a 400,000-byte file goes up in two

[outbound]
poll_interval_ms = 50
stream_update_ms = 1000

[[bots]]
app_id = "$APP_ID"
display_name = "agentgate e2e (MCP host)"
allowed_tenants = ["$TENANT"]
require_endorsement = true

[bots.policy]
dm = "open"
approvers = ["$APPROVER"]
approval_timeout_secs = 60
EOF
check "D: agentgate check --dev accepts the config (/mcp token with approve, files.endpoints = a loopback upload sink)" "$BIN" check --dev --config "$CFG_D"

cat >"$S/mcp.js" <<'EOF'
// A minimal MCP client over Streamable HTTP (JSON-RPC POSTs; answers as JSON or as an SSE stream), no
// dependencies: one session per run (initialize, notifications/initialized, the calls, DELETE).
// usage: node mcp.js URL list | call TOOL ARGS_JSON | seq STEPS_JSON ([[TOOL, ARGS], ...]) | stream CHAT_ID LABEL
//   | relay CHAT_ID REQUEST_ID SECONDS (a reply there, then Claude Code's permission relay: a permission_request,
//     and the verdict notification awaited on the session's GET stream)
// The bearer token comes from $E2E_MCP_TOKEN. A string argument "@base64:PATH" is replaced by the file's bytes
// in base64 (too large for a command line). Prints JSON: a call's {tool, ok, result | error}.
const fs = require('fs');
const [URL_, cmd, a1, a2, a3] = process.argv.slice(2);
let session = null, nextId = 1;
const headers = () => ({ 'content-type': 'application/json', accept: 'application/json, text/event-stream',
  authorization: `Bearer ${process.env.E2E_MCP_TOKEN}`, ...(session ? { 'mcp-session-id': session } : {}) });
// The first JSON-RPC message of an SSE answer that satisfies `want`.
async function sse(r, want, what) {
  const reader = r.body.getReader(), dec = new TextDecoder();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`${what}: the event stream ended first`);
    buf = (buf + dec.decode(value, { stream: true })).replace(/\r\n/g, '\n');
    let i;
    while ((i = buf.indexOf('\n\n')) >= 0) {
      const data = buf.slice(0, i).split('\n').filter(l => l.startsWith('data:')).map(l => l.slice(5).trim()).join('\n');
      buf = buf.slice(i + 2);
      if (!data) continue;
      const m = JSON.parse(data);
      if (want(m)) { reader.cancel().catch(() => {}); return m; }
    }
  }
}
async function rpc(method, params, notification) {
  const msg = notification ? { jsonrpc: '2.0', method, params } : { jsonrpc: '2.0', id: nextId++, method, params };
  const r = await fetch(URL_, { method: 'POST', headers: headers(), body: JSON.stringify(msg), signal: AbortSignal.timeout(200000) });
  session = session || r.headers.get('mcp-session-id');
  if (r.status >= 300) throw new Error(`${method} -> HTTP ${r.status} ${await r.text()}`);
  if (notification) { await r.text(); return null; }
  if (!(r.headers.get('content-type') || '').includes('text/event-stream')) return JSON.parse(await r.text());
  return sse(r, m => m.id === msg.id, method);
}
const inline = v => typeof v === 'string' && v.startsWith('@base64:') ? fs.readFileSync(v.slice(8)).toString('base64')
  : Array.isArray(v) ? v.map(inline) : v && typeof v === 'object' ? Object.fromEntries(Object.entries(v).map(([k, x]) => [k, inline(x)])) : v;
async function call(tool, args) {
  const m = await rpc('tools/call', { name: tool, arguments: inline(args) });
  if (m.error) return { tool, ok: false, error: m.error.message || JSON.stringify(m.error) };
  const text = ((m.result.content || [])[0] || {}).text;
  let result = m.result.structuredContent;
  if (result === undefined) { try { result = JSON.parse(text); } catch { result = text; } }
  return m.result.isError ? { tool, ok: false, error: text } : { tool, ok: true, result };
}
const sleep = ms => new Promise(r => setTimeout(r, ms));
// A host's long turn: a status line, a second one, the answer appended piece by piece, then the end.
async function stream(chat, label) {
  const out = { label, appends: [] };
  out.start = await call('stream_start', { chat_id: chat, informative: `Searching the runbooks (${label})…` });
  const id = out.start.ok && out.start.result.stream_id;
  if (!id) return out;
  await sleep(1200);
  out.appends.push(await call('stream_append', { stream_id: id, informative: `Reading 3 files (${label})…` }));
  await sleep(1200);
  const pieces = `${label}: one two three four five six seven eight nine ten eleven twelve`.split(/(?= )/);
  for (const p of pieces) { out.appends.push(await call('stream_append', { stream_id: id, text: p })); await sleep(350); }
  out.finish = await call('stream_finish', { stream_id: id, text: ', done ✓' });
  out.text = pieces.join('') + ', done ✓';
  return out;
}
// Claude Code's permission relay from a session that works in CHAT: the verdict comes as a notification.
async function relay(chat, req, secs) {
  const out = {};
  out.reply = await call('reply', { chat_id: chat, text: `checking ${req} before the deployment` });
  const ctl = new AbortController(), timer = setTimeout(() => ctl.abort(), secs * 1000);
  const push = await fetch(URL_, { method: 'GET', headers: { ...headers(), accept: 'text/event-stream' }, signal: ctl.signal });
  if (push.status >= 300) throw new Error(`GET (the push stream) -> HTTP ${push.status} ${await push.text()}`);
  const verdict = sse(push, m => m.method === 'notifications/claude/channel/permission' && (m.params || {}).request_id === req, 'the push stream');
  await rpc('notifications/claude/channel/permission_request',
    { request_id: req, tool_name: 'Bash', description: `e2e ${req}: run the deployment`, input_preview: 'deploy --stage prod' }, true);
  try { out.verdict = (await verdict).params; } catch (e) { out.error = String(e); } finally { clearTimeout(timer); ctl.abort(); }
  return out;
}
(async () => {
  const init = await rpc('initialize', { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'e2e-playground', version: '1.0.0' } });
  if (init.error || !session) throw new Error('initialize failed: ' + JSON.stringify(init));
  await rpc('notifications/initialized', {}, true);
  let out;
  if (cmd === 'list') out = (await rpc('tools/list', {})).result;
  else if (cmd === 'call') out = await call(a1, JSON.parse(a2));
  else if (cmd === 'seq') { out = []; for (const [t, args] of JSON.parse(a1)) out.push(await call(t, args)); }
  else if (cmd === 'stream') out = await stream(a1, a2);
  else if (cmd === 'relay') out = await relay(a1, a2, Number(a3));
  else throw new Error('unknown command ' + cmd);
  console.log(JSON.stringify(out));
  await fetch(URL_, { method: 'DELETE', headers: headers(), signal: AbortSignal.timeout(5000) }).catch(() => {});
})().catch(e => { console.error('mcp client failed:', e.message); process.exit(1); });
EOF
cat >"$S/sink.js" <<'EOF'
// An upload sink on loopback that behaves like a OneDrive upload session (what a file consent's uploadUrl is):
// PUT fragments with Content-Range (each must start where the last ended and match its length), 202 with
// nextExpectedRanges until the last, then 201 with a driveItem; GET says where the session stands. Every request
// is recorded as a JSON line: method, url, Content-Range, Content-Length, whether an Authorization header came,
// the body's size and sha256, the answer. usage: node sink.js PORT FILE
const http = require('http'), crypto = require('crypto'), fs = require('fs');
const [PORT, FILE] = process.argv.slice(2);
const sha = b => crypto.createHash('sha256').update(b).digest('hex');
const sessions = new Map();
http.createServer((req, res) => {
  const parts = [];
  req.on('data', c => parts.push(c));
  req.on('end', () => {
    const body = Buffer.concat(parts);
    const rec = { method: req.method, url: req.url, content_range: req.headers['content-range'] || null,
      content_length: req.headers['content-length'] || null, authorization: 'authorization' in req.headers,
      bytes: body.length, sha256: sha(body) };
    let status = 404, out = { error: { code: 'itemNotFound', message: 'no such upload session' } };
    if (req.url.startsWith('/upload/')) {
      const s = sessions.get(req.url) || { next: 0, parts: [] };
      sessions.set(req.url, s);
      const m = /^bytes (\d+)-(\d+)\/(\d+)$/.exec(rec.content_range || '');
      if (req.method === 'GET') { status = 200; out = { nextExpectedRanges: [`${s.next}-`] }; }
      else if (req.method !== 'PUT') { status = 405; out = { error: { code: 'notAllowed' } }; }
      else if (!m || +m[1] !== s.next || +m[2] - +m[1] + 1 !== body.length || +m[2] >= +m[3]) {
        status = 416; out = { error: { code: 'invalidRange', message: `expected bytes ${s.next}-` } };
      } else {
        s.parts.push(body); s.next = +m[2] + 1;
        if (s.next === +m[3]) {
          const all = Buffer.concat(s.parts);
          rec.complete = { size: all.length, sha256: sha(all) };
          status = 201; out = { id: 'e2e-item', name: req.url.split('/').pop(), size: all.length };
        } else { status = 202; out = { nextExpectedRanges: [`${s.next}-`] }; }
      }
    }
    rec.status = status;
    fs.appendFileSync(FILE, JSON.stringify(rec) + '\n');
    res.writeHead(status, { 'content-type': 'application/json' });
    res.end(JSON.stringify(out));
  });
}).listen(+PORT, '127.0.0.1', () => console.log(`upload sink on 127.0.0.1:${PORT}`));
EOF
bg upload-sink.log node "$S/sink.js" 18091 "$S/sink-d.jsonl"
wait_log "$L/upload-sink.log" '^upload sink on' 10 || fatal "the upload sink did not start"
bg agentgate-d.log "$BIN" serve --dev --config "$CFG_D"
wait_log "$L/agentgate-d.log" '^agentgate listening on http://127\.0\.0\.1:3981' 20 || fatal "agentgate (D) did not start"
wait_http http://127.0.0.1:3981/readyz 200 20 || fatal "agentgate (D) never became ready"
wait_http "$MCP_D" 401 10 || fatal "agentgate (D) does not serve /mcp (401 without a token)"
bg auth-proxy-d.log env LISTEN=3983 TARGET=http://127.0.0.1:3981/api/messages APP_ID="$APP_ID" node "$J/auth-proxy.js"
wait_log "$L/auth-proxy-d.log" '^auth proxy 127\.0\.0\.1:3983' 15 || fatal "auth-proxy.js (D) did not start"
start_playground d 56156 http://127.0.0.1:3983/api/messages
PG_D=http://127.0.0.1:56156
WS_D=$S/ws-d.jsonl
: >"$WS_D"
bg ws-d.log node "$S/ws-watch.js" "ws://127.0.0.1:56156/_ws_conversation/v1/conversations/stream" "$WS_D"
wait_log "$L/ws-d.log" '^ws open' 15 || fatal "could not open the Playground's conversation WebSocket (D)"
pgd() { node "$S/pg.js" "$PG_D" "$@" 2>>"$L/pg-d-api.log"; }
mcpd() { node "$S/mcp.js" "$MCP_D" "$@" 2>>"$L/mcp-d.log"; }
inbox_d() { "$BIN" inbox --config "$CFG_D" --limit 1000 >"$S/inbox-d.jsonl" 2>>"$L/inbox-d.err"; }

# The people's side: a 1:1 message (the approver's 1:1 chat), an @mention in the group chat and one in the
# General channel (a new thread).
pgd config >"$S/pg-d-config.json" || fatal "Playground D: GET /_internal/v1/config failed"
PC_D=$(q json "$S/pg-d-config.json" 'd.body.config.personalChat.id')
GC_D=$(q json "$S/pg-d-config.json" 'd.body.config.groupChats[0].id')
CH_D=$(q json "$S/pg-d-config.json" 'd.body.config.teams[0].id')   # the General channel's id is the team's
export PC_D GC_D CH_D
if pgd install "$PC_D" >>"$L/pg-d-api.log" && sleep 0.5 && pgd message "$PC_D" "D $NONCE: hello" >>"$L/pg-d-api.log" &&
  pgd mention "$GC_D" "group $NONCE: how is the deployment going?" >"$S/gc-msg.json" &&
  pgd mention "$CH_D" "channel $NONCE: who owns the release?" >"$S/ch-msg.json"; then
  pass "D: Playground install + messages in the 1:1 chat, the group chat and a channel (@mentions)"
else
  fail "D: Playground install + messages in the 1:1 chat, the group chat and a channel (@mentions)"
fi
CH_ROOT=$(q json "$S/ch-msg.json" 'd.body.messageId' 2>/dev/null || echo none)
CH_THREAD=$(q json "$S/ch-msg.json" 'd.body.postConversationId' 2>/dev/null || echo none)
export CH_ROOT CH_THREAD
inbox_d_has() { inbox_d && q inbox "$S/inbox-d.jsonl" "$1"; }
check "D: the three messages are in the inbox, authenticated (botframework): 1:1, group chat, channel thread" eventually 20 \
  inbox_d_has '[["personal", env.PC_D], ["groupChat", env.GC_D], ["channel", env.CH_THREAD]].every(([t, c]) => d.some(e => e.activity_type === "message" && e.auth === "botframework" && e.conversation_id === c && e.b.conversation.conversationType === t && e.b.text.includes(env.NONCE)))'
GC_MSG=$(q inbox "$S/inbox-d.jsonl" 'd.find(e => e.activity_type === "message" && e.conversation_id === env.GC_D).activity_id' 2>/dev/null || echo none)
export GC_MSG

mcpd list >"$S/tools-d.json" || true
check "D: /mcp lists the tools a host needs here; send_message says each call waits for an owner's approval" \
  q json "$S/tools-d.json" '["send_file", "read_messages", "reply", "react", "stream_start", "stream_append", "stream_finish"].every(n => d.tools.some(t => t.name === n)) && /approval in Teams/.test(d.tools.find(t => t.name === "send_message").description)'

# 1. send_file in the 1:1 chat, accepted: the consent card, the answer, the upload, the file info card.
FILE_D=report-$NONCE.csv
# shellcheck disable=SC2016 # a JavaScript template literal, expanded by node, not the shell
node -e 'let s = "", i = 0; while (s.length < 400000) s += `row ${i++},${process.argv[2]},${"x".repeat(40)}\n`; require("fs").writeFileSync(process.argv[1], s.slice(0, 399999) + "\n");' \
  "$S/d/$FILE_D" "$NONCE"
FILE_SHA=$(sha256sum "$S/d/$FILE_D" | cut -d' ' -f1)
export FILE_D FILE_SHA
mcpd call send_file "{\"chat_id\": \"$PC_D\", \"name\": \"$FILE_D\", \"content_base64\": \"@base64:$S/d/$FILE_D\", \"description\": \"e2e $NONCE\"}" \
  >"$S/send-file-d.json" || true
check "D/files: send_file in the 1:1 chat: offered once the consent card is delivered (consent id, message id, size, sha256)" \
  q json "$S/send-file-d.json" 'd.ok && d.result.status === "offered" && d.result.via === "consent_card" && d.result.size === 400000 && d.result.sha256 === env.FILE_SHA && /^[0-9a-f]+$/.test(d.result.consent_id) && !!d.result.message_id'
CONSENT=$(q json "$S/send-file-d.json" 'd.result.consent_id' 2>/dev/null || echo none)
CONSENT_MSG=$(q json "$S/send-file-d.json" 'd.result.message_id' 2>/dev/null || echo none)
export CONSENT CONSENT_MSG
check "D/files: the consent card went to the mock Connector with the file's name and size, both contexts naming the consent -> 201 (per the recording)" \
  q rec "$S/rec-d.log" 'd.some(r => r.request.method === "POST" && r.request.url.endsWith("/v3/conversations/" + encodeURIComponent(env.PC_D) + "/activities") && r.response.statusCode === 201 && r.response.body.id === env.CONSENT_MSG && (r.request.body.attachments || []).some(a => a.contentType === "application/vnd.microsoft.teams.card.file.consent" && a.name === env.FILE_D && a.content.sizeInBytes === 400000 && a.content.acceptContext.agentgate_consent === env.CONSENT && a.content.declineContext.agentgate_consent === env.CONSENT))'
# The Playground keeps the card's content but drops the attachment's name (and, for the file info card, its contentUrl).
check "D/files: the Playground shows the file consent card in the 1:1 chat (WebSocket createMessage: its size, accept and decline contexts)" eventually 10 \
  q jsonl "$WS_D" 'd.some(e => e.action === "createMessage" && e.actionConversationId === env.PC_D && e.message.messageId === env.CONSENT_MSG && (e.message.attachments || []).some(a => a.contentType === "application/vnd.microsoft.teams.card.file.consent" && a.content.sizeInBytes === 400000 && a.content.acceptContext.agentgate_consent === env.CONSENT && a.content.declineContext.agentgate_consent === env.CONSENT))'
# The Playground's UI shows no buttons on this card (it renders "File Consent Card is not supported yet"), and its
# invoke API takes only the invokes its UI sends: the answer goes through its custom-activity API, as Teams sends it.
pgd invoke-named fileConsent/invoke "$PC_D" "$CONSENT_MSG" '{"type":"fileUpload","action":"decline","context":{}}' >"$S/consent-probe-d.json" || true
if q json "$S/consent-probe-d.json" 'd.status >= 300' >/dev/null 2>&1; then
  skip "D/files: the Playground's own invoke API does not take fileConsent/invoke (it answered: $(head -c 300 "$S/consent-probe-d.json")); the answers below go through its custom-activity API"
fi
cat >"$S/consent-accept.json" <<EOF
{"type": "invoke", "name": "fileConsent/invoke", "id": "e2e-consent-accept-$NONCE", "replyToId": "$CONSENT_MSG",
 "channelData": {"tenant": {"id": "$TENANT"}},
 "value": {"type": "fileUpload", "action": "accept", "context": {"agentgate_consent": "$CONSENT"},
           "uploadInfo": {"contentUrl": "$SINK/files/$FILE_D", "name": "$FILE_D", "uploadUrl": "$SINK/upload/session-$NONCE",
                          "uniqueId": "e2e-item-$NONCE", "fileType": "csv"}}}
EOF
check "D/files: the person accepts (fileConsent/invoke through the Playground's custom-activity API)" pgd custom "$PC_D" "$S/consent-accept.json"
check "D/files: agentgate answered the accept 200 with an empty body at once (per the recording)" eventually 10 \
  q rec "$S/rec-d.log" 'd.some(r => /-> User Application/.test(r.direction) && JSON.stringify(r.request.body || {}).includes("e2e-consent-accept-" + env.NONCE) && r.response.statusCode === 200 && (r.response.body === undefined || r.response.body === null || r.response.body === ""))'
check "D/files: the upload sink got the bytes in two PUTs with the exact Content-Range (0-327679/400000, 327680-399999/400000), no token, the offer's sha256" eventually 15 \
  q jsonl "$S/sink-d.jsonl" '((p) => p.length === 2 && p[0].content_range === "bytes 0-327679/400000" && p[0].bytes === 327680 && p[1].content_range === "bytes 327680-399999/400000" && p[1].bytes === 72320 && p.every(x => x.method === "PUT" && !x.authorization) && p[0].status === 202 && p[1].status === 201 && p[1].complete.sha256 === env.FILE_SHA)(d.filter(x => x.url === "/upload/session-" + env.NONCE))'
check "D/files: the file info card went to the mock Connector with the uploadInfo's contentUrl, name, uniqueId, fileType -> 201 (per the recording)" eventually 15 \
  q rec "$S/rec-d.log" 'd.some(r => r.request.method === "POST" && r.request.url.endsWith("/v3/conversations/" + encodeURIComponent(env.PC_D) + "/activities") && r.response.statusCode === 201 && (r.request.body.attachments || []).some(a => a.contentType === "application/vnd.microsoft.teams.card.file.info" && a.contentUrl === env.SINK + "/files/" + env.FILE_D && a.name === env.FILE_D && a.content.uniqueId === "e2e-item-" + env.NONCE && a.content.fileType === "csv"))'
check "D/files: the Playground shows the file info card in the 1:1 chat (WebSocket createMessage: its uniqueId and fileType)" eventually 10 \
  q jsonl "$WS_D" 'd.some(e => e.action === "createMessage" && e.actionConversationId === env.PC_D && (e.message.attachments || []).some(a => a.contentType === "application/vnd.microsoft.teams.card.file.info" && a.content.uniqueId === "e2e-item-" + env.NONCE && a.content.fileType === "csv"))'
events_d() { mcpd call read_messages '{"limit": 200}' >"$S/events-d.json" && q json "$S/events-d.json" "d.ok && ($1)(d.result.events)"; }
check "D/files: the host gets file_consent (accept) and then file_upload (uploaded, with the file card's outbox id) (read_messages)" eventually 15 \
  events_d '(ev) => ev.some(e => e.event === "file_consent" && e.file.consent_id === env.CONSENT && e.file.action === "accept") && ev.some(e => e.event === "file_upload" && e.file.consent_id === env.CONSENT && e.file.status === "uploaded" && Number.isInteger(e.file.outbox_id) && e.content.includes(env.FILE_D))'

# 2. send_file in the 1:1 chat, declined: the host is told, nothing is uploaded.
mcpd call send_file "{\"chat_id\": \"$PC_D\", \"name\": \"declined-$NONCE.txt\", \"text\": \"not wanted $NONCE\"}" >"$S/send-file-d2.json" || true
CONSENT2=$(q json "$S/send-file-d2.json" 'd.ok && d.result.status === "offered" && d.result.consent_id' 2>/dev/null || echo none)
export CONSENT2
cat >"$S/consent-decline.json" <<EOF
{"type": "invoke", "name": "fileConsent/invoke", "id": "e2e-consent-decline-$NONCE", "replyToId": "$(q json "$S/send-file-d2.json" 'd.result.message_id' 2>/dev/null || echo none)",
 "channelData": {"tenant": {"id": "$TENANT"}},
 "value": {"type": "fileUpload", "action": "decline", "context": {"agentgate_consent": "$CONSENT2"}}}
EOF
check "D/files: a second file offered, then declined (fileConsent/invoke through the custom-activity API)" pgd custom "$PC_D" "$S/consent-decline.json"
check "D/files: the decline reaches the host as a file_consent event (action decline)" eventually 15 \
  events_d '(ev) => ev.some(e => e.event === "file_consent" && e.file.consent_id === env.CONSENT2 && e.file.action === "decline")'
declined_audited() { "$BIN" audit --config "$CFG_D" --limit 200 | grep '"send_file"' | grep '"declined"' | grep -q "$CONSENT2"; }
check "D/files: the decline is audited (send_file declined)" declined_audited

# 3. Progress in a group chat and in a channel thread: one message updated in place, then the whole answer.
cat >"$S/progress-view.js" <<'EOF'
// The stream with LABEL as the people in CONV see it: the bot message the first status line created, its updates
// in place, and whether any other message carried the stream's text.
module.exports = (ev, conv, label, app) => {
  const start = ev.findIndex(e => e.action === 'createMessage' && e.actionConversationId === conv && e.message.from.id === app && (e.message.text || '').includes(`(${label})`));
  if (start < 0) return null;
  const id = ev[start].message.messageId;
  const texts = [ev[start].message.text].concat(ev.slice(start + 1).filter(e => e.action === 'updateMessage' && e.message.messageId === id).map(e => e.message.text || ''));
  const others = ev.filter((e, i) => i !== start && e.action === 'createMessage' && (e.message.text || '').includes(label)).length;
  return { id, texts, others };
};
EOF
for where in group channel; do
  if [ "$where" = group ]; then conv=$GC_D; else conv=$CH_THREAD; fi
  mcpd stream "$conv" "progress-$where-$NONCE" >"$S/stream-$where-d.json" || true
  check "D/progress ($where): stream_start answers mode updating; every append and the finish succeed" \
    q json "$S/stream-$where-d.json" 'd.start.ok && d.start.result.mode === "updating" && d.appends.length > 3 && d.appends.every(a => a.ok && a.result.status === "appended") && d.finish.ok && d.finish.result.status === "delivered"'
  export PROGRESS_CONV=$conv PROGRESS_LABEL=progress-$where-$NONCE
  check "D/progress ($where): the Playground shows ONE message: the status lines, then growing text, updated in place, then the whole answer (id = stream_finish's message_id)" eventually 10 \
    q jsonl "$WS_D" '((v, r) => v !== null && v.others === 0 && v.id === r.finish.result.message_id && v.texts[0].startsWith("Searching the runbooks") && v.texts.some(t => t.startsWith("Reading 3 files")) && ((tx) => tx.length >= 2 && tx.every((t, i) => i === 0 || t.startsWith(tx[i - 1])) && tx[tx.length - 1] === r.text)(v.texts.filter(t => t.startsWith(env.PROGRESS_LABEL))))(require(env.E2E_SCRATCH + "/progress-view.js")(d, env.PROGRESS_CONV, env.PROGRESS_LABEL, env.APP_ID), JSON.parse(require("fs").readFileSync(env.E2E_SCRATCH + "/stream-" + (env.PROGRESS_CONV === env.GC_D ? "group" : "channel") + "-d.json", "utf8")))'
done

# 4. A quoted reply in the group chat; a late answer into the channel thread.
mcpd call reply "{\"chat_id\": \"$GC_D\", \"text\": \"quoted $NONCE: the deployment is green\", \"quote\": \"$GC_MSG\"}" >"$S/quote-d.json" || true
QUOTE_ID=$(q json "$S/quote-d.json" 'd.result.message_id' 2>/dev/null || echo none)
export QUOTE_ID
check "D/quote: reply with quote is delivered in the group chat" q json "$S/quote-d.json" 'd.ok && d.result.status === "delivered"'
# shellcheck disable=SC2016 # a JavaScript template literal, expanded by node, not the shell
check "D/quote: the Connector got the quote (text starts <quoted messageId=…/>, a quotedReply entity naming the message) -> 201 (per the recording)" \
  q rec "$S/rec-d.log" 'd.some(r => r.request.method === "POST" && r.request.url.includes("/v3/conversations/" + encodeURIComponent(env.GC_D) + "/activities") && r.response.statusCode === 201 && r.request.body.text.startsWith(`<quoted messageId="${env.GC_MSG}"/>`) && (r.request.body.entities || []).some(x => x.type === "quotedReply" && x.quotedReply.messageId === env.GC_MSG))'
check "D/quote: the Playground shows the reply in the group chat (WebSocket createMessage, id = message_id)" eventually 10 \
  q jsonl "$WS_D" 'd.some(e => e.action === "createMessage" && e.actionConversationId === env.GC_D && e.message.messageId === env.QUOTE_ID && e.message.text.includes("quoted " + env.NONCE))'
if q jsonl "$WS_D" 'd.some(e => e.message && e.message.messageId === env.QUOTE_ID && e.message.text.startsWith("<quoted "))' >/dev/null 2>&1; then
  skip "D/quote: the Playground has no quoted replies: it keeps the <quoted messageId=…/> tag in the message's text and drops the quotedReply entity (no quote bubble)"
fi
mcpd call reply "{\"chat_id\": \"$CH_D\", \"thread\": \"$CH_ROOT\", \"text\": \"thread $NONCE: the release is owned by the platform team\"}" >"$S/thread-d.json" || true
THREAD_ID=$(q json "$S/thread-d.json" 'd.result.message_id' 2>/dev/null || echo none)
export THREAD_ID
check "D/thread: reply with thread (chat_id = the channel, thread = the root post) is delivered" q json "$S/thread-d.json" 'd.ok && d.result.status === "delivered"'
check "D/thread: the Playground shows it in the channel thread (WebSocket createMessage in CHANNEL;messageid=ROOT)" eventually 10 \
  q jsonl "$WS_D" 'd.some(e => e.action === "createMessage" && e.actionConversationId === env.CH_THREAD && e.message.messageId === env.THREAD_ID && e.message.text.includes("thread " + env.NONCE))'

# 5. The bot's own reaction (Teams preview: PUT …/activities/{id}/reactions/{type}).
mcpd call react "{\"chat_id\": \"$GC_D\", \"message_id\": \"$GC_MSG\", \"reaction\": \"like\"}" >"$S/react-d.json" || true
if q json "$S/react-d.json" 'd.ok && d.result.status === "delivered"' >/dev/null 2>&1; then
  pass "D/react: the bot's reaction is delivered"
else
  # What the mock Connector answers to that request, asked directly (the recording keeps only the routes it has).
  enc() { node -p 'encodeURIComponent(process.argv[1])' "$1"; }
  react_answer=$(curl -s -X PUT -H 'Content-Type: application/json' -d '{}' -w ' -> HTTP %{http_code}' --max-time 5 \
    "$PG_D/_connector/v3/conversations/$(enc "$GC_D")/activities/$(enc "$GC_MSG")/reactions/like" | tr -s ' \n' ' ' | head -c 300)
  skip "D/react: the Playground's mock Connector has no reactions route (PUT …/activities/{id}/reactions/like answers: $react_answer); agentgate's tool result: $(head -c 300 "$S/react-d.json")"
  react_refused() { q json "$S/react-d.json" '!d.ok && /not delivered/.test(d.error)' && "$BIN" audit --config "$CFG_D" --limit 200 | grep '"react"' | grep -q '"dead"'; }
  check "D/react: the refusal reaches the host as a tool error (nothing claimed delivered), audited react dead" react_refused
fi

# 6. Owner approvals in Teams, answered by the approver (the Playground's current user, authenticated by the proxy).
# (a) A tool call that waits for an owner (the token's approve = ["send_message"]): the card goes to the approver's
# 1:1 chat; the call runs on Allow.
node "$S/mcp.js" "$MCP_D" seq "[[\"reply\", {\"chat_id\": \"$GC_D\", \"text\": \"working on it $NONCE\"}], [\"send_message\", {\"chat_id\": \"$GC_D\", \"text\": \"approved $NONCE: deploying now\"}]]" \
  >"$S/approve-d.json" 2>>"$L/mcp-d.log" &
APPROVE_PID=$!
PIDS+=("$APPROVE_PID")
# card_d FILE [REQUEST_ID]: the Playground shows an approval card (of REQUEST_ID); its event is left in FILE.
card_d() {
  REQ=${2:-} q jsonl "$WS_D" 'd.find(e => e.action === "createMessage" && (e.message.attachments || []).some(a => a.contentType === "application/vnd.microsoft.card.adaptive" && (a.content.actions || []).some(x => x.verb === "agentgate.permission" && x.data.behavior === "allow" && (!env.REQ || x.data.request_id === env.REQ))))' >"$1"
}
card_in_pc() { card_d "$S/approval-card-d.json" && q json "$S/approval-card-d.json" 'd.actionConversationId === env.PC_D'; }
check "D/approval (per call): the approval card (Allow / Deny, Action.Execute agentgate.permission) reaches the approver's 1:1 chat" eventually 20 card_in_pc
APPROVAL_CARD=$(q json "$S/approval-card-d.json" 'd.message.messageId' 2>/dev/null || echo none)
REQ1=$(q json "$S/approval-card-d.json" 'd.message.attachments[0].content.actions[0].data.request_id' 2>/dev/null || echo none)
ALLOW=$(q json "$S/approval-card-d.json" 'JSON.stringify(d.message.attachments[0].content.actions.find(a => a.title === "Allow"))' 2>/dev/null || echo '{}')
export APPROVAL_CARD REQ1
"$BIN" outbox --config "$CFG_D" --limit 1000 >"$S/outbox-d.jsonl" 2>>"$L/outbox-d.err" || true
CARD_RESULT=$(q jsonl "$S/outbox-d.jsonl" 'd.filter(e => JSON.stringify(e.op).includes(env.REQ1) && JSON.stringify(e.op).includes("agentgate.permission")).map(e => e.result_id).join(",")' 2>/dev/null || echo none)
if [ "$CARD_RESULT" = "$APPROVAL_CARD" ]; then
  check "D/approval (per call): the approver clicks Allow (Action.Execute through the auth proxy: authenticated)" pgd invoke "$PC_D" "$APPROVAL_CARD" "$ALLOW"
  check "D/approval (per call): the card is updated in place to say it was allowed (WebSocket updateMessage of the card)" eventually 15 \
    q jsonl "$WS_D" 'd.some(e => e.action === "updateMessage" && e.message.messageId === env.APPROVAL_CARD && /Allowed/.test(JSON.stringify(e.message.attachments || [])))'
else
  skip "D/approval (per call): the Playground's card cannot answer: its mock Connector split the card's activity (text + card) into two messages and answered 202 with no id (per the recording: $(q rec "$S/rec-d.log" 'JSON.stringify(d.filter(r => r.request.method === "POST" && JSON.stringify(r.request.body || {}).includes(env.REQ1)).map(r => [r.response.statusCode, r.response.body]))' 2>/dev/null)), so agentgate knows no id for the card (outbox result_id: \"$CARD_RESULT\"; the Playground shows it as $APPROVAL_CARD)"
  pgd invoke "$PC_D" "$APPROVAL_CARD" "$ALLOW" >"$S/click-d.json" || true
  refused_click() { q json "$S/click-d.json" '/not the approval card/.test(JSON.stringify(d.body))' && "$BIN" audit --config "$CFG_D" --limit 200 | grep '"permission_answer"' | grep "$REQ1" | grep -q '"refused_not_the_card"'; }
  check "D/approval (per call): so a click on it decides nothing: 'not the approval card of this request', audited refused_not_the_card" refused_click
  check "D/approval (per call): the approver answers by typing 'yes $REQ1' in the 1:1 chat (authenticated through the proxy)" pgd message "$PC_D" "yes $REQ1"
fi
wait "$APPROVE_PID" || true
check "D/approval (per call): the waiting send_message ran after the approver's Allow and was delivered" \
  q json "$S/approve-d.json" 'd[0].ok && d[1].ok && d[1].result.status === "delivered"'
check "D/approval (per call): the Playground shows the approved message in the group chat" eventually 10 \
  q jsonl "$WS_D" 'd.some(e => e.action === "createMessage" && e.actionConversationId === env.GC_D && e.message.text === "approved " + env.NONCE + ": deploying now")'
answer_audited() { "$BIN" audit --config "$CFG_D" --limit 200 | grep '"permission_answer"' | grep "$REQ1" | grep -q '"allow"'; }
check "D/approval (per call): the answer is audited (permission_answer allow)" answer_audited

# (b) Claude Code's permission relay, from a session that works in the group chat (it just replied there): the card
# goes privately to the approver there (a targeted message) when the Connector names them as a member.
REQ2=$(node -e 'const a = "abcdefghijkmnopqrstuvwxyz"; let s = ""; for (let i = 0; i < 5; i++) s += a[Math.floor(Math.random() * a.length)]; console.log(s)')
[ "$REQ2" = "$REQ1" ] && REQ2=zzzzz
export REQ2
node "$S/mcp.js" "$MCP_D" relay "$GC_D" "$REQ2" 40 >"$S/relay-d.json" 2>>"$L/mcp-d.log" &
RELAY_PID=$!
PIDS+=("$RELAY_PID")
check "D/approval (relay): the permission request's card reaches the Playground" eventually 20 card_d "$S/relay-card-d.json" "$REQ2"
RELAY_CONV=$(q json "$S/relay-card-d.json" 'd.actionConversationId' 2>/dev/null || echo none)
if [ "$RELAY_CONV" = "$GC_D" ]; then
  check "D/approval (relay): the card is targeted at the approver in the group chat (POST …/activities?isTargetedActivity=true, recipient isTargeted)" \
    q rec "$S/rec-d.log" 'd.some(r => r.request.method === "POST" && r.request.url.includes("isTargetedActivity=true") && r.request.body.recipient.isTargeted === true && JSON.stringify(r.request.body).includes(env.REQ2))'
else
  skip "D/approval (relay): no targeted card: the Playground's mock Connector finds members by Teams id only (agentgate's GET …/members/$APPROVER answered: $(q rec "$S/rec-d.log" 'JSON.stringify(d.filter(r => r.request.method === "GET" && r.request.url.includes("/members/" + env.APPROVER)).map(r => [r.response.statusCode, r.response.body])[0])' 2>/dev/null)), so agentgate asked in the approver's 1:1 chat"
  asked_personally() {
    [ "$RELAY_CONV" = "$PC_D" ] && "$BIN" audit --config "$CFG_D" --limit 200 | grep '"permission_ask"' | grep "$REQ2" | grep '"personal"' | grep -q 'not targeted: the approver is not a member of the conversation'
  }
  check "D/approval (relay): agentgate fell back to the approver's 1:1 chat and audited why (permission_ask personal: not a member)" asked_personally
fi
check "D/approval (relay): the approver answers by typing 'no $REQ2' in the 1:1 chat" pgd message "$PC_D" "no $REQ2"
wait "$RELAY_PID" || true
check "D/approval (relay): the session gets notifications/claude/channel/permission {request_id, behavior: deny}" \
  q json "$S/relay-d.json" 'd.reply.ok && d.verdict && d.verdict.request_id === env.REQ2 && d.verdict.behavior === "deny"'

# 7. The books.
check "D: agentgate audit --verify: the chain is intact" "$BIN" audit --verify --config "$CFG_D"
check "D: no file was uploaded but the accepted one (the sink saw no other request)" \
  q jsonl "$S/sink-d.jsonl" 'd.every(x => x.url === "/upload/session-" + env.NONCE)'
check "D: the declined offer never led to a file_upload event" \
  q json "$S/events-d.json" '!d.result.events.some(e => e.event === "file_upload" && e.file.consent_id === env.CONSENT2)'
cp "$WS_D" "$S/inbox-d.jsonl" "$S/sink-d.jsonl" "$L/" 2>/dev/null || true
summary
[ "$FAILED" -eq 0 ]
