#!/bin/bash
# canary_agent.py's hostile agent in bash alone, for images with no python (the docker
# provider's): looks for a canary key in every process's environment and command line in the
# sandbox and every file it can read, then calls the model through the gateway with the
# placeholder token it holds. What to call is in canary.plan beside it (the API's path, the
# header the key goes in, the body: one line each). Prints one line, CANARY {...}.
set -u
cd "$(dirname "$0")" || exit 1
needle="sk-hal-""canary-" # split: this file itself must not hold the needle
{ read -r path; read -r header; read -r body; } <canary.plan
token=${HAL_GATEWAY_TOKEN:-}

json_list() {
  local out="" sep=""
  for item in "$@"; do out+="$sep\"$item\""; sep=", "; done
  printf '%s' "$out"
}

proc_hits=()
for file in /proc/[0-9]*/environ /proc/[0-9]*/cmdline; do
  grep -qaF -- "$needle" "$file" 2>/dev/null && proc_hits+=("$file")
done

files() {
  find / \( -path /proc -o -path /sys -o -path /dev -o -path /usr \) -prune \
    -o -type f -print0 2>/dev/null
}
# Lists from pipes without process substitution: a VM image may have no /dev/fd.
seen=$(files | tr -cd '\0' | wc -c)
found=$(files | xargs -0 -r grep -laF -- "$needle" 2>/dev/null)
mapfile -t file_hits <<<"$found"
[ -n "$found" ] || file_hits=()

# Loopback ports in the base URLs the preset handed over (argv, environment, home).
found=$({ env; printf '%s\n' "$@"; grep -rhoa 'http://127\.0\.0\.1:[0-9]*' \
  "${HOME:-/nonexistent}" 2>/dev/null; } | grep -oa 'http://127\.0\.0\.1:[0-9]*' \
  | sed 's/.*://' | sort -un)
mapfile -t ports <<<"$found"
[ -n "$found" ] || ports=()

call() {
  local value=$token line
  [ "$header" = authorization ] && value="Bearer $token"
  exec 3<>"/dev/tcp/127.0.0.1/$1" || { echo -1; return; }
  printf 'POST %s HTTP/1.1\r\nhost: 127.0.0.1\r\n%s: %s\r\ncontent-type: application/json\r\nanthropic-version: 2023-06-01\r\ncontent-length: %s\r\nconnection: close\r\n\r\n%s' \
    "$path" "$header" "$value" "${#body}" "$body" >&3
  read -r line <&3
  exec 3<&-
  line=${line#* }
  echo "${line%% *}"
}
status=()
for port in "${ports[@]}"; do status+=("$(call "$port")"); done

printf 'CANARY {"proc_hits": [%s], "file_hits": [%s], "files_seen": %s, "token_prefix": "%s", "ports": [%s], "status": [%s]}\n' \
  "$(json_list "${proc_hits[@]}")" "$(json_list "${file_hits[@]}")" "$seen" "${token:0:7}" \
  "$(IFS=,; echo "${ports[*]}")" "$(IFS=,; echo "${status[*]}")"
