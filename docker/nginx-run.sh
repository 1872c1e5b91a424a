#!/bin/sh
# NGINX's container in compose (service nginx): NGINX in the foreground, plus the two chores a sidecar would do.
#
# 1. Reload on request. No other container may signal this one, so a release's router (auto_deployment/release/
#    router.py, HandshakeReload) rewrites the upstream/shadow files on the shared `upstream` volume and then
#    writes a new token to $NGINX_RELOAD_REQUEST. Every $NGINX_RELOAD_POLL_S this loop compares the token with
#    the last one it answered; on a change it runs `nginx -t` and, if the files are valid, `nginx -s reload`
#    (graceful: old workers finish their requests), then writes "<token> ok" ("<token> invalid|failed: <why>") to
#    $NGINX_RELOAD_APPLIED. The router waits for that answer. The paths are app/contracts/topology.py's
#    reload_request_path / reload_applied_path, rendered into compose.yml.
# 2. Keep the edge log bounded. NGINX also writes its access log ($EDGE_LOG, app/contracts/edgelog.py) to a
#    volume mtail reads (service edge-metrics); above $EDGE_LOG_MAX_MB it is renamed to .1 (the previous .1 is
#    dropped) and NGINX reopens its logs. mtail follows the rename.
#
# docker stop (SIGTERM) or SIGQUIT makes NGINX quit gracefully; SIGHUP and SIGUSR1 are passed on to NGINX.
# (A shell cannot trap a signal ignored when it started, e.g. under nohup: run it as a container does, with defaults.)
# Settings: NGINX_BIN (nginx), NGINX_CONF (/etc/nginx/nginx.conf), NGINX_PREFIX (none), NGINX_RELOAD_POLL_S (0.5),
# EDGE_LOG (none), EDGE_LOG_MAX_MB (100).
set -eu
: "${NGINX_RELOAD_REQUEST:?}" "${NGINX_RELOAD_APPLIED:?}"
bin=${NGINX_BIN:-nginx}
conf=${NGINX_CONF:-/etc/nginx/nginx.conf}
poll=${NGINX_RELOAD_POLL_S:-0.5}
max_kb=$(( ${EDGE_LOG_MAX_MB:-100} * 1024 ))
set -- -c "$conf"
[ -z "${NGINX_PREFIX:-}" ] || set -- -p "$NGINX_PREFIX" "$@"

log() { printf '%s nginx-run %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >&2; }
children() { cat "/proc/$nginx_pid/task/$nginx_pid/children" 2>/dev/null || true; }
answer() {  # atomically (a fresh temporary file, then a rename), so the router never reads half a line
  tmp=$(mktemp "$NGINX_RELOAD_APPLIED.XXXXXX") && printf '%s\n' "$1" >"$tmp" && chmod 644 "$tmp" &&
    mv -f "$tmp" "$NGINX_RELOAD_APPLIED" || log "could not answer $1 in $NGINX_RELOAD_APPLIED"
}
# Until the master's workers differ from $1 (new ones run: the master read the files), NGINX exited, or $2 polls
# of 50 ms passed (where /proc says nothing).
await_workers() {
  i=0
  while [ "$(children)" = "$1" ] && [ "$i" -lt "$2" ] && kill -0 "$nginx_pid" 2>/dev/null; do
    sleep 0.05
    i=$((i + 1))
  done
}

mkdir -p /tmp/nginx
[ -z "${EDGE_LOG:-}" ] || mkdir -p "$(dirname "$EDGE_LOG")"
# The directory the router writes to: owner (uid 10001, the deploy job) and group 0 (the group an arbitrary
# MOVIEREC_UID runs with: the scheduler) may replace files there; nobody else, NGINX's workers included.
# Volumes made before this rule get it here: this script is the one root process that mounts the volume.
dir=$(dirname "$NGINX_RELOAD_REQUEST")
chgrp 0 "$dir" 2>/dev/null && chmod 2775 "$dir" 2>/dev/null || log "could not set the mode of $dir"
# Read before NGINX starts: a request written after this line is newer than the files NGINX reads, and the loop
# below reloads for it; this one is answered once NGINX runs, since NGINX reads the files it names.
last=$(cat "$NGINX_RELOAD_REQUEST" 2>/dev/null || true)
"$bin" "$@" -g 'daemon off;' &
nginx_pid=$!
trap 'kill -QUIT "$nginx_pid" 2>/dev/null || true; wait "$nginx_pid" || true; exit 0' TERM QUIT INT
# `docker compose kill -s HUP nginx` (docker/ci-deploy.sh, after it recreates slots) reaches this script, PID 1:
# passed on, it is NGINX's own graceful reload; USR1 (reopen the logs) likewise.
trap 'kill -HUP "$nginx_pid" 2>/dev/null || true' HUP
trap 'kill -USR1 "$nginx_pid" 2>/dev/null || true' USR1
await_workers "" 600
if ! kill -0 "$nginx_pid" 2>/dev/null; then
  wait "$nginx_pid" || exit $?  # NGINX refused to start: the container exits with its status
fi
[ -z "$last" ] || answer "$last ok"
log "started nginx (pid $nginx_pid), reload requests: $NGINX_RELOAD_REQUEST"
# Nothing below may end the script but NGINX's own exit: a failed command is logged and answered, never fatal.
while kill -0 "$nginx_pid" 2>/dev/null; do
  sleep "$poll" &
  wait $! || true  # a signal interrupts the wait at once, so the trap runs without waiting out the poll
  token=$(cat "$NGINX_RELOAD_REQUEST" 2>/dev/null || true)
  if [ -n "$token" ] && [ "$token" != "$last" ]; then
    if ! why=$("$bin" "$@" -t -q 2>&1); then
      answer "$token invalid: $(printf '%s' "$why" | tr '\n' ' ')"
      log "refused $token: $why"
    elif before=$(children) && why=$("$bin" "$@" -s reload 2>&1); then
      await_workers "$before" 40
      answer "$token ok"
      log "reloaded for $token"
    else
      answer "$token failed: $(printf '%s' "$why" | tr '\n' ' ')"
      log "reload for $token failed: $why"
    fi
    last=$token
  fi
  if [ -n "${EDGE_LOG:-}" ] && [ -f "$EDGE_LOG" ] && [ "$(du -k "$EDGE_LOG" | cut -f1)" -gt "$max_kb" ]; then
    if mv -f "$EDGE_LOG" "$EDGE_LOG.1" && "$bin" "$@" -s reopen; then
      log "edge log above ${EDGE_LOG_MAX_MB:-100} MB: rotated to $EDGE_LOG.1"
    else
      log "edge log rotation failed"
    fi
  fi
done
wait "$nginx_pid"
