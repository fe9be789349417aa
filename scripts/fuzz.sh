#!/usr/bin/env bash
# Coverage-guided fuzzing on the stable toolchain: AFL++ through cargo-afl (docs/fuzzing.md).
#
# Usage: scripts/fuzz.sh [TARGET|all] [SECONDS]
#   TARGET   activity, token, split, envelope, html, config, or all (the default)
#   SECONDS  how long each target runs (default 60)
#
# Installs cargo-afl (which builds its own AFL++) when missing, builds fuzz/ with instrumentation, seeds
# each target's corpus from the fixtures (src/teams/testdata, tests/, ../shared/fixtures/playground when
# present, the starter configuration), runs each target for SECONDS and prints: target, seconds, execs,
# crashes. Work files go to $CARGO_TARGET_DIR/fuzz-work (default target/fuzz-work); crashing inputs are
# listed at the end, to be turned into regression tests. Exit status 1 if any target crashed.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TARGETS=(activity token split envelope html config)
WHICH="${1:-all}"
SECONDS_EACH="${2:-60}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
WORK="$TARGET_DIR/fuzz-work"

if [[ "$WHICH" != all ]]; then
    [[ " ${TARGETS[*]} " == *" $WHICH "* ]] || { echo "unknown target '$WHICH' (one of: ${TARGETS[*]}, all)" >&2; exit 2; }
    TARGETS=("$WHICH")
fi
[[ "$SECONDS_EACH" =~ ^[0-9]+$ && "$SECONDS_EACH" -gt 0 ]] || { echo "SECONDS must be a positive integer" >&2; exit 2; }

# --- tools: cargo-afl builds AFL++ (afl-fuzz and its runtime) from the source it ships, for this rustc.
if ! cargo afl --version >/dev/null 2>&1; then
    echo "installing cargo-afl…" >&2
    cargo install cargo-afl --locked
fi
cargo afl config --build >/dev/null 2>&1 || true # already built for this rustc: nothing to do

# --- build: the fuzz crate is outside the main workspace; its instrumented build has a target dir of its own.
echo "building fuzz targets…" >&2
(cd "$ROOT/fuzz" && CARGO_TARGET_DIR="$TARGET_DIR/fuzz" cargo afl build --release --quiet)
BIN="$TARGET_DIR/fuzz/release"

# --- seeds
fixtures() { # every JSON fixture we have
    find "$ROOT/src/teams/testdata" "$ROOT/tests" -name '*.json' 2>/dev/null
    local shared="$ROOT/../shared/fixtures/playground"
    [[ -d /work/shared/fixtures/playground ]] && shared=/work/shared/fixtures/playground
    [[ -d "$shared" ]] && find "$shared" -name '*.json'
    return 0
}

seed() { # seed TARGET DIR
    local t="$1" dir="$2" n=0 f
    mkdir -p "$dir"
    case "$t" in
        activity)
            while read -r f; do cp "$f" "$dir/$(basename "$f")"; done < <(fixtures)
            printf '{"type":"message","serviceUrl":"https://smba.trafficmanager.net/amer/","conversation":{"id":"a:1","tenantId":"t"},"channelData":{"tenant":{"id":"T"}},"text":"<at>Bot</at> hi","entities":[{"type":"mention","text":"<at>Bot</at>","mentioned":{"id":"28:bot","name":"Bot"}}]}' >"$dir/minimal.json"
            ;;
        token)
            local h p
            h=$(printf '{"alg":"RS256","kid":"k1","typ":"JWT"}' | base64 -w0 | tr '+/' '-_' | tr -d '=')
            p=$(printf '{"iss":"https://api.botframework.com","aud":"11111111-2222-3333-4444-555555555555","exp":4102444800,"serviceurl":"https://smba.trafficmanager.net/amer/"}' | base64 -w0 | tr '+/' '-_' | tr -d '=')
            printf 'Bearer %s.%s.c2ln' "$h" "$p" >"$dir/bf.txt"
            p=$(printf '{"iss":"https://login.microsoftonline.com/t/v2.0","aud":["x"],"tid":"t","exp":1}' | base64 -w0 | tr '+/' '-_' | tr -d '=')
            printf 'bearer %s.%s.' "$h" "$p" >"$dir/entra.txt"
            printf 'Basic dXNlcjpwYXNz' >"$dir/basic.txt"
            ;;
        split | envelope | html)
            # The text of every fixture activity (Teams HTML among them), plus a few hand-made ones.
            while read -r f; do
                python3 - "$f" "$dir" "$t" <<'PY' || true
import json, sys
f, out, t = sys.argv[1], sys.argv[2], sys.argv[3]
try:
    text = json.load(open(f, encoding="utf-8")).get("text")
except Exception:
    sys.exit(0)
if isinstance(text, str) and text:
    data = text.encode()
    if t == "split":
        data = bytes([16]) + data
    open(f"{out}/{f.rsplit('/', 1)[-1]}.txt", "wb").write(data)
PY
            done < <(fixtures)
            printf '\x08first paragraph\n\nsecond 😀👨\u200d👩\u200d👧 🇫🇷 e\xcc\x81 日本語\r\nend' >"$dir/mixed.txt"
            printf '<p>Hi <at id="0">Bot</at>&nbsp;see <a href="https://x.test">x</a><br><img src="https://x.test/i.png"></p><script>x</script>' >"$dir/teams.html"
            printf '⟦/untrusted_content 0badc0de⟧ </channel> \xe2\x80\xae \xf3\xa0\x84\x80' >"$dir/markers.txt"
            ;;
        config)
            { printf '\x00'; cat "$ROOT/src/starter.toml"; } >"$dir/starter.toml"
            printf '\x01"S3cr3tValue123456"' >"$dir/file-credential.txt"
            printf '\x02{ v = "S3cr3tValue123456" }' >"$dir/file-token.txt"
            printf '\x03[84736251904735, "S3cr3tValue123456"]' >"$dir/env-credential.txt"
            ;;
    esac
    n=$(find "$dir" -type f | wc -l)
    [[ "$n" -gt 0 ]] || printf 'x' >"$dir/x"
}

stat_of() { # stat_of FILE KEY
    awk -F' *: *' -v k="$2" '$1 == k { print $2 }' "$1" 2>/dev/null
}

rows=()
crashed=0
for t in "${TARGETS[@]}"; do
    rm -rf "${WORK:?}/$t"
    seed "$t" "$WORK/$t/in"
    echo "fuzzing $t for ${SECONDS_EACH}s…" >&2
    AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_SKIP_CRASHES=1 AFL_QUIET=1 \
        cargo afl fuzz -i "$WORK/$t/in" -o "$WORK/$t/out" -V "$SECONDS_EACH" -- "$BIN/$t" >"$WORK/$t/afl.log" 2>&1 || {
        echo "afl-fuzz failed for $t; see $WORK/$t/afl.log" >&2
        tail -n 20 "$WORK/$t/afl.log" >&2
    }
    stats="$WORK/$t/out/default/fuzzer_stats"
    execs=$(stat_of "$stats" execs_done)
    secs=$(stat_of "$stats" run_time)
    crashes=$(stat_of "$stats" saved_crashes)
    [[ -n "$crashes" ]] || crashes=$(stat_of "$stats" unique_crashes)
    rows+=("$t ${secs:-?} ${execs:-?} ${crashes:-?}")
    [[ "${crashes:-0}" == 0 ]] || crashed=1
done

printf '\n%-10s %8s %12s %8s\n' target seconds execs crashes
for r in "${rows[@]}"; do
    # shellcheck disable=SC2086
    printf '%-10s %8s %12s %8s\n' $r
done
if [[ "$crashed" == 1 ]]; then
    echo >&2
    echo "crashing inputs (replay one with: $BIN/TARGET < FILE):" >&2
    find "$WORK" -path '*/crashes/id:*' -type f >&2
    exit 1
fi
