#!/bin/bash
# A stand-in "claude" made of bash alone (the VM image has no python): one model call through
# ANTHROPIC_BASE_URL, then CONNECTs through HTTPS_PROXY to a denied host and to the host named
# in the prompt (allowed), then a direct connection. Prints CALL / EGRESS / DIRECT lines.
set -u
allowed=$(cat)
hostport=${ANTHROPIC_BASE_URL#http://}
hostport=${hostport%%/*}
body='{"model":"claude-sonnet-4-5","max_tokens":16,"messages":[]}'
exec 3<>"/dev/tcp/127.0.0.1/${hostport##*:}"
printf 'POST /v1/messages HTTP/1.1\r\nhost: gw\r\nx-api-key: %s\r\ncontent-type: application/json\r\ncontent-length: %s\r\nconnection: close\r\n\r\n%s' \
  "$ANTHROPIC_API_KEY" "${#body}" "$body" >&3
read -r status <&3
echo "CALL ${status%$'\r'}"
exec 3<&-

proxy=${HTTPS_PROXY#http://}
auth=$(printf %s "${proxy%@*}" | base64 -w0)
proxy_port=${proxy##*:}
proxy_port=${proxy_port%/}
tunnel() {
  exec 4<>"/dev/tcp/127.0.0.1/$proxy_port"
  printf 'CONNECT %s HTTP/1.1\r\nProxy-Authorization: Basic %s\r\n\r\n' "$1" "$auth" >&4
  read -r line <&4
  line=${line%$'\r'}
  case $line in
    *" 200 "*)
      while read -r head <&4 && [ -n "${head%$'\r'}" ]; do :; done
      echo "through the tunnel" >&4
      read -r answer <&4
      echo "EGRESS $1 $answer" ;;
    *) echo "EGRESS $1 $line" ;;
  esac
  exec 4<&-
}
tunnel denied.example:443
tunnel "$allowed"
host=${allowed%:*}
host=${host#[}
if (exec 5<>"/dev/tcp/${host%]}/${allowed##*:}") 2>/dev/null; then
  echo "DIRECT $allowed direct connected"
else
  echo "DIRECT $allowed direct refused"
fi
