# Sourced by ops/mariadb.sh and ops/kafka.sh: what both need to stop a daemon they started, by pid file.
# The caller defines `say` and `running_pid` (the pid of *its* process or failure, usually through
# `pid_if_running`), and sets PIDFILE and STOP_TIMEOUT (seconds before SIGKILL).
# shellcheck shell=bash

# The pid in PIDFILE if that process still runs and its command line holds $1 (so a recycled pid of
# some other program, or the same daemon of another run dir, is never taken for ours), else failure.
pid_if_running() {
  [ -f "$PIDFILE" ] || return 1
  local pid
  pid="$(cat "$PIDFILE" 2>/dev/null || true)"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$1" || return 1
  echo "$pid"
}

# True when something accepts TCP connections on 127.0.0.1:$1.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# SIGTERM the pid in PIDFILE, wait for it to exit (SIGKILL after STOP_TIMEOUT), remove the pid file.
stop_by_pidfile() {
  local pid
  if ! pid="$(running_pid)"; then
    rm -f "$PIDFILE"
    say "not running"
    return 0
  fi
  kill -TERM "$pid"
  local deadline=$((SECONDS + STOP_TIMEOUT))
  while kill -0 "$pid" 2>/dev/null; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      say "no clean shutdown after ${STOP_TIMEOUT} s: SIGKILL $pid"
      kill -KILL "$pid" 2>/dev/null || true
      while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
      break
    fi
    sleep 0.1
  done
  rm -f "$PIDFILE"
  say "stopped (pid $pid)"
}
