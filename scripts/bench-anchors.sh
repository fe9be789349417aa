#!/usr/bin/env bash
# agentgate next to the anchor servers (botbuilder-js, Agents SDK, Python botbuilder, Rust floors) in ONE run of
# ../shared/bench/run-anchors.sh, as server `g` on 127.0.0.1:3995.
#
#   bash scripts/bench-anchors.sh [run-anchors.sh options]     e.g.  -o a,d2,g      or  -o a,d2,g -r 1 -n
#
# Builds agentgate (release), writes a small launcher into a temporary folder and passes it to run-anchors.sh through
# EXTRA_SERVERS. Each time run-anchors.sh starts `g`, the launcher writes a config into a FRESH data dir under the
# run's scratch folder (bot = the run's $APP_ID, tenant = activity.json's, OpenID metadata = the run's $META,
# [log] level = warn) and then execs `agentgate serve --dev --config FILE`, so the PID run-anchors.sh measures and
# stops is agentgate's own. --dev only lets the activity's http://127.0.0.1/_connector serviceUrl through; every
# request carries a token and is validated as in production.
#
# Read the `g` row with care: run-anchors.sh posts the SAME activity.json (same activity id) on every request, so
# for agentgate every request after the first is a DUPLICATE (acknowledged 202 without a second commit); the row
# measures token validation + deduplication, not the durable commit. scripts/load.sh measures the commit path
# (unique activity ids).
#
# Environment: AGENTGATE_ANCHORS = path of run-anchors.sh (default: ../shared/bench/run-anchors.sh from the repo
# root). Without it (a plain clone) this prints SKIP and exits 0.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ANCHORS=${AGENTGATE_ANCHORS:-$ROOT/../shared/bench/run-anchors.sh}
if [ ! -f "$ANCHORS" ]; then
  echo "SKIP: $ANCHORS is absent (a plain clone); nothing was run."
  exit 0
fi
TENANT=11111111-2222-3333-4444-555555555555   # conversation.tenantId / channelData.tenant.id of bench/activity.json
PORT=3995
AG=$ROOT/target/release/agentgate

# Configuration from the caller's environment must not leak into the measured server.
while IFS= read -r v; do unset "$v"; done < <(compgen -e | grep -E '^(AGENTGATE(_CONFIG$|__)|RUST_LOG$)' || true)

skip_build=0
for a in "$@"; do [ "$a" = -n ] && skip_build=1; done
if [ "$skip_build" = 0 ]; then
  echo "[bench-anchors] cargo build --release (agentgate)" >&2
  (cd "$ROOT" && cargo build --release -q --bin agentgate)
fi
[ -x "$AG" ] || { echo "missing $AG (run without -n)" >&2; exit 1; }
VERSION=$("$AG" --version | awk '{print $2}')

LAUNCH_DIR=$(mktemp -d /tmp/agentgate-anchors.XXXXXX)
trap 'rm -rf "$LAUNCH_DIR"' EXIT
LAUNCHER=$LAUNCH_DIR/serve-agentgate
cat >"$LAUNCHER" <<EOF
#!/usr/bin/env bash
# Written by scripts/bench-anchors.sh. usage: serve-agentgate APP_ID METADATA_URL SCRATCH_DIR
# Serves agentgate on 127.0.0.1:$PORT with a fresh data dir; exec keeps the PID the caller started.
set -euo pipefail
data=\$(mktemp -d "\$3/agentgate-data.XXXXXX")
cat >"\$data/agentgate.toml" <<TOML
data_dir = "\$data"

[server]
bind = "127.0.0.1:$PORT"

[clouds.public]
openid_metadata_url = "\$2"

[log]
level = "warn"

[[bots]]
app_id = "\$1"
display_name = "anchor benchmark bot"
allowed_tenants = ["$TENANT"]
TOML
exec "$AG" serve --dev --config "\$data/agentgate.toml"
EOF
chmod +x "$LAUNCHER"

# run-anchors.sh expands $APP_ID, $META and $SCRATCH in this line (eval), then runs the command word-split, without
# a shell, under `taskset -c 1`: hence one executable path plus plain arguments.
# shellcheck disable=SC2016  # the $VARS are for run-anchors.sh to expand
EXTRA_SERVERS="g|$PORT|agentgate $VERSION serve --dev, SQLite store (fixed body: dedupe path)|$LAUNCHER"' $APP_ID $META $SCRATCH' \
  bash "$ANCHORS" "$@"
