#!/usr/bin/env bash
# Validate a freshly packaged Teams app manifest against the official JSON schema (v1.29), and check the
# package's icons with an independent PNG reader (Python's zlib). The manifest is also validated with the
# optional agentic-user entry of manifests/agentic-user/ added (placeholders filled).
#
#   scripts/check-manifest-schema.sh [SCHEMA]
#
# SCHEMA defaults to ../shared/schemas/MicrosoftTeams.v1.29.schema.json (relative to the repository); when it
# does not exist the check is skipped (exit 0). Needs cargo and python3 (with venv); installs `jsonschema`
# into target/schema-venv on first use.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
schema="${1:-$root/../shared/schemas/MicrosoftTeams.v1.29.schema.json}"
if [[ ! -f "$schema" ]]; then
    echo "check-manifest-schema: $schema not found; skipped"
    exit 0
fi
schema="$(cd "$(dirname "$schema")" && pwd)/$(basename "$schema")"

venv="$root/target/schema-venv"
if [[ ! -x "$venv/bin/python" ]] || ! "$venv/bin/python" -c 'import jsonschema' 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check 'jsonschema>=4.18,<5'
fi

cargo build --quiet --manifest-path "$root/Cargo.toml" --bin agentgate
bin="$root/target/debug/agentgate"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cat >"$work/agentgate.toml" <<'TOML'
[[bots]]
app_id = "11111111-2222-3333-4444-555555555555"
display_name = "Schema Check Bot"
allowed_tenants = ["aaaaaaaa-0000-0000-0000-000000000001"]
commands = [
    { title = "summarize", description = "Summarize this chat" },
    { title = "Plan my week", prompt = "Plan my week from my calendar" },
]
TOML

check() {
    local tenant="$1"
    shift
    (cd "$work" && "$bin" teams-app package --config agentgate.toml --tenant "$tenant" "$@" >/dev/null)
    "$venv/bin/python" - "$schema" "$work/teams-app/build/$tenant.zip" "$root/manifests/agentic-user" <<'PY'
import json, struct, sys, zipfile, zlib
from jsonschema.validators import validator_for

schema = json.load(open(sys.argv[1], encoding="utf-8"))
pkg = zipfile.ZipFile(sys.argv[2])
assert pkg.namelist() == ["manifest.json", "color.png", "outline.png"], pkg.namelist()
manifest = json.loads(pkg.read("manifest.json"))
errors = sorted(validator_for(schema)(schema).iter_errors(manifest), key=lambda e: list(e.absolute_path))
for e in errors:
    print(f"manifest.{'.'.join(map(str, e.absolute_path))}: {e.message}", file=sys.stderr)
if errors:
    sys.exit(f"{sys.argv[2]}: {len(errors)} schema error(s)")

# The optional agentic-user template (manifests/agentic-user/, not rendered by `teams-app package` yet): the
# manifest with its agenticUserTemplates entry added, placeholders filled, must still be valid.
fill = lambda text: text.replace("{{TEMPLATE_ID}}", "agentgate-agent-user").replace("{{BLUEPRINT_ID}}", manifest["id"])
fragment = json.loads(fill(open(f"{sys.argv[3]}/manifest.agenticUserTemplates.json", encoding="utf-8").read()))
template = json.loads(fill(open(f"{sys.argv[3]}/agenticUserTemplateManifest.json", encoding="utf-8").read()))
errors = list(validator_for(schema)(schema).iter_errors({**manifest, **fragment}))
for e in errors:
    print(f"manifest+agenticUserTemplates.{'.'.join(map(str, e.absolute_path))}: {e.message}", file=sys.stderr)
if errors:
    sys.exit(f"{sys.argv[2]}: {len(errors)} schema error(s) with agenticUserTemplates")
assert fragment["agenticUserTemplates"][0]["id"] == template["id"], "agentic-user template id mismatch"
assert template["agentIdentityBlueprintId"] == manifest["id"], "agentIdentityBlueprintId"

def png(name, size, outline):
    data = pkg.read(name)
    assert data[:8] == b"\x89PNG\r\n\x1a\n", name
    w, h, depth, ctype = struct.unpack(">IIBB", data[16:26])
    assert (w, h, depth, ctype) == (size, size, 8, 6), (name, w, h, depth, ctype)
    idat, i = b"", 8
    while i < len(data):
        (n,) = struct.unpack(">I", data[i:i + 4])
        kind, body = data[i + 4:i + 8], data[i + 8:i + 8 + n]
        assert zlib.crc32(kind + body) == struct.unpack(">I", data[i + 8 + n:i + 12 + n])[0], name
        if kind == b"IDAT":
            idat += body
        i += 12 + n
    raw = zlib.decompress(idat)
    rows = [raw[r * (w * 4 + 1) + 1:(r + 1) * (w * 4 + 1)] for r in range(h)]
    alphas = [row[x * 4 + 3] for row in rows for x in range(w)]
    if outline:
        assert alphas[0] == 0 and 0 in alphas and 255 in alphas, f"{name}: not white on transparent"
        assert all(row[x * 4:x * 4 + 3] == b"\xff\xff\xff" for row in rows for x in range(w) if row[x * 4 + 3]), name
    else:
        assert all(a == 255 for a in alphas), f"{name}: not opaque"

png("color.png", 192, False)
png("outline.png", 32, True)
print(f"{sys.argv[2].rsplit('/', 1)[-1]}: manifest valid against {sys.argv[1].rsplit('/', 1)[-1]}"
      " (also with agenticUserTemplates); icons OK")
PY
}

check with-domain --domain bot.contoso.com --version 1.2.3
check no-domain --website https://contoso.com/agent --privacy-url https://contoso.com/privacy --terms-url https://contoso.com/terms
