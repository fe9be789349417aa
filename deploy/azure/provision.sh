#!/usr/bin/env bash
# Provision a single-tenant Teams bot for agentgate with the az CLI:
# Entra app registration + service principal, certificate credential, Azure Bot resource with the
# messaging endpoint, Teams channel. Prints the [[bots]] table for agentgate.toml at the end.
# Usage: deploy/azure/provision.sh --help
set -euo pipefail

prog=${0##*/}

# emit: copy stdin to stdout in pure bash (no external command, so --help and --dry-run need no PATH).
emit() {
  local line
  while IFS= read -r line || [[ -n $line ]]; do
    printf '%s\n' "$line"
  done
}

usage() {
  emit <<USAGE
Usage: $prog --name NAME --resource-group RG --location LOCATION \\
       --endpoint https://HOST/api/messages --tenant-id TENANT_GUID [--cert CERT.pem] [--dry-run]

Creates, with the az CLI (logged in to the tenant: az login --tenant TENANT_GUID):
  1. the resource group RG in LOCATION (no change if it exists);
  2. a single-tenant Entra app registration NAME and its service principal;
  3. a certificate credential on it: the public certificate CERT.pem, or, without --cert, a new
     self-signed certificate NAME-cert.pem and unencrypted key NAME-key.pem (mode 0600) made with openssl
     in the current directory;
  4. the Azure Bot NAME (SingleTenant, this app id and tenant) with the messaging endpoint;
  5. its Microsoft Teams channel.

Options:
  --name NAME            bot resource and app registration name: 4-42 letters, digits, '-' or '_'
  --resource-group RG    resource group
  --location LOCATION    Azure region of the resource group, e.g. westeurope
  --endpoint URL         messaging endpoint: https://HOST/api/messages
  --tenant-id GUID       the Entra tenant (directory) id that owns the bot
  --cert FILE            PEM certificate (public part only) to add as the app's credential
  --sku F0|S1            Azure Bot pricing tier (default F0)
  --dry-run              print every command, one per line prefixed with '+ ', and run none
  -h, --help             this help
USAGE
}

die() {
  printf '%s: error: %s\n' "$prog" "$1" >&2
  exit 2
}

name="" resource_group="" location="" endpoint="" tenant_id="" cert="" sku="F0" dry_run=0

need_value() {
  # $1: option, $2: number of remaining arguments including the option.
  if [[ $2 -lt 2 ]]; then
    die "$1 needs a value (see --help)"
  fi
}

while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) need_value "$1" "$#"; name=$2; shift 2 ;;
    --resource-group) need_value "$1" "$#"; resource_group=$2; shift 2 ;;
    --location) need_value "$1" "$#"; location=$2; shift 2 ;;
    --endpoint) need_value "$1" "$#"; endpoint=$2; shift 2 ;;
    --tenant-id) need_value "$1" "$#"; tenant_id=$2; shift 2 ;;
    --cert) need_value "$1" "$#"; cert=$2; shift 2 ;;
    --sku) need_value "$1" "$#"; sku=$2; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done

# --- Input validation: every problem is named before anything runs. ---
[[ -n $name ]] || die "--name is required"
[[ -n $resource_group ]] || die "--resource-group is required"
[[ -n $location ]] || die "--location is required"
[[ -n $endpoint ]] || die "--endpoint is required"
[[ -n $tenant_id ]] || die "--tenant-id is required (the Entra directory id: az account show --query tenantId -o tsv)"

[[ $name =~ ^[A-Za-z0-9][A-Za-z0-9_-]{3,41}$ ]] \
  || die "--name '$name': use 4-42 letters, digits, '-' or '_', starting with a letter or digit"
[[ $resource_group =~ ^[-A-Za-z0-9._()]{1,90}$ && $resource_group != *. ]] \
  || die "--resource-group '$resource_group': use 1-90 letters, digits, '-', '_', '.', '(' or ')', not ending with '.'"
[[ $location =~ ^[a-z0-9]+$ ]] \
  || die "--location '$location': use an Azure region name such as westeurope (az account list-locations -o table)"
[[ $tenant_id =~ ^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$ ]] \
  || die "--tenant-id '$tenant_id' is not a GUID (the Entra directory id: az account show --query tenantId -o tsv)"
[[ $endpoint == https://* ]] \
  || die "--endpoint '$endpoint' must start with https:// (Azure Bot Service only calls HTTPS endpoints)"
[[ $endpoint == */api/messages ]] \
  || die "--endpoint '$endpoint' must end with /api/messages (agentgate's webhook path)"
[[ $endpoint =~ ^https://[A-Za-z0-9.-]+(:[0-9]{1,5})?/api/messages$ ]] \
  || die "--endpoint '$endpoint': expected https://HOST/api/messages or https://HOST:PORT/api/messages"
[[ $sku == F0 || $sku == S1 ]] || die "--sku '$sku': use F0 or S1"

if [[ -n $cert && $dry_run -eq 0 ]]; then
  [[ -f $cert && -r $cert ]] || die "--cert '$cert': not a readable file"
  grep -q -- '-----BEGIN CERTIFICATE-----' "$cert" \
    || die "--cert '$cert': no PEM certificate (-----BEGIN CERTIFICATE-----) in it"
  if grep -q -- 'PRIVATE KEY-----' "$cert"; then
    die "--cert '$cert' contains a private key: pass the certificate alone (the key stays with agentgate)"
  fi
fi

if [[ $dry_run -eq 0 ]]; then
  for tool in az openssl; do
    command -v "$tool" >/dev/null 2>&1 || die "'$tool' is not on PATH (or use --dry-run to see the commands)"
  done
fi

# --- Running commands. ---
# run CMD...: print it prefixed with '+ ' (shell-quoted), then run it unless --dry-run.
run() {
  local quoted
  printf -v quoted '%q ' "$@"
  printf '+ %s\n' "${quoted% }"
  if [[ $dry_run -eq 0 ]]; then
    "$@"
  fi
}

# capture VAR PLACEHOLDER CMD...: like run, storing the command's output in VAR
# (PLACEHOLDER under --dry-run). Printing goes to stderr so the output stays clean.
capture() {
  local var=$1 placeholder=$2 quoted value
  shift 2
  printf -v quoted '%q ' "$@"
  printf '+ %s\n' "${quoted% }"
  if [[ $dry_run -eq 0 ]]; then
    value=$("$@")
  else
    value=$placeholder
  fi
  printf -v "$var" '%s' "$value"
}

if [[ $dry_run -eq 1 ]]; then
  echo "# agentgate: provisioning bot '$name' in tenant $tenant_id (dry run: nothing is executed)"
else
  echo "# agentgate: provisioning bot '$name' in tenant $tenant_id"
fi

current_tenant=""
capture current_tenant "$tenant_id" az account show --query tenantId --output tsv
if [[ $current_tenant != "$tenant_id" ]]; then
  die "az is logged in to tenant '$current_tenant', not '$tenant_id': run az login --tenant $tenant_id"
fi

run az group create --name "$resource_group" --location "$location" --output none

app_id=""
capture app_id APP_ID az ad app create --display-name "$name" --sign-in-audience AzureADMyOrg \
  --query appId --output tsv
[[ -n $app_id ]] || die "az ad app create returned no appId"
run az ad sp create --id "$app_id" --output none

key_file=""
if [[ -z $cert ]]; then
  cert="$name-cert.pem"
  key_file="$name-key.pem"
  if [[ $dry_run -eq 0 && ( -e $cert || -e $key_file ) ]]; then
    die "$cert or $key_file already exists: pass --cert, or move them away"
  fi
  # The key is created 0600 (umask), as agentgate requires of file: secrets.
  (
    umask 077
    run openssl req -x509 -newkey rsa:2048 -sha256 -days 365 -nodes \
      -subj "/CN=$name" -keyout "$key_file" -out "$cert"
  )
fi
run az ad app credential reset --id "$app_id" --cert "@$cert" --append --output none

run az bot create --resource-group "$resource_group" --name "$name" --app-type SingleTenant \
  --appid "$app_id" --tenant-id "$tenant_id" --endpoint "$endpoint" --sku "$sku" --output none
# The endpoint is also set explicitly, so re-running against an existing bot moves it.
run az bot update --resource-group "$resource_group" --name "$name" --endpoint "$endpoint" --output none
run az bot msteams create --resource-group "$resource_group" --name "$name" --output none

key_ref="file:/etc/agentgate/bot-key.pem"
if [[ -n $key_file ]]; then
  key_note="private key: $key_file"
else
  key_note="private key: the key of $cert"
fi

emit <<SNIPPET

# Paste into agentgate.toml. Copy the $key_note to /etc/agentgate/bot-key.pem (mode 0600)
# and the certificate $cert to /etc/agentgate/bot-cert.pem.
# Under deploy/systemd/agentgate.service use credential:NAME references with LoadCredential= instead.
[[bots]]
app_id = "$app_id"
display_name = "$name"
allowed_tenants = ["$tenant_id"]
cloud = "public"
tenant_id = "$tenant_id"
credential = "$key_ref"
certificate = "file:/etc/agentgate/bot-cert.pem"
SNIPPET
