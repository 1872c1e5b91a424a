#!/usr/bin/env bash
# A private MariaDB server for the provenance database (tests, CI and the native demo).
#
#   ops/mariadb.sh start    initialise the data dir once, start in the background, wait until it accepts clients
#   ops/mariadb.sh stop     stop exactly the server of this run dir (by its pid) and wait for it to exit
#   ops/mariadb.sh status   exit 0 and print the pid if it runs, exit 3 otherwise
#   ops/mariadb.sh client   a `mariadb` shell as the admin account over the instance's socket (extra args passed on)
#
# Environment (defaults in brackets):
#   MOVIEREC_RUN_DIR      [<repo>/.run]  the server lives in <run dir>/mariadb/ (my.cnf, data, socket, pid, log)
#   MYSQL_PORT            [3306]         TCP port, bound to 127.0.0.1 only
#   MYSQL_ADMIN_USER      [root]         admin account, made sure of at every start (all privileges, grant option)
#   MYSQL_ADMIN_PASSWORD  []             its password; EMPTY means the admin logs in over loopback TCP without
#                                        a password. That is acceptable only because this instance listens on
#                                        127.0.0.1 alone and lives in a private run dir; set a password anywhere
#                                        that matters. The account exists for 'localhost' (socket; OS root also
#                                        via unix_socket), '127.0.0.1' and '::1'. With another admin name, the
#                                        initial root@loopback accounts keep an empty password (private instance).
#   MARIADB_START_TIMEOUT [30]           seconds to wait for the server to accept clients
#   MARIADB_STOP_TIMEOUT  [30]           seconds to wait for a clean shutdown before SIGKILL
#
# It runs as the current user; as root (how CI runs) the server is told `--user=root`, since mariadbd refuses
# to run as root otherwise. Starting twice is harmless (the second start sees the first server); data survive
# stop/start. The application accounts and the schema are not made here: `python -m auto_deployment.schema apply`.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
RUN_DIR="${MOVIEREC_RUN_DIR:-$ROOT/.run}"
DIR="$RUN_DIR/mariadb"
PORT="${MYSQL_PORT:-3306}"
ADMIN_USER="${MYSQL_ADMIN_USER:-root}"
ADMIN_PASSWORD="${MYSQL_ADMIN_PASSWORD:-}"
START_TIMEOUT="${MARIADB_START_TIMEOUT:-30}"
STOP_TIMEOUT="${MARIADB_STOP_TIMEOUT:-30}"
CONF="$DIR/my.cnf"
DATA="$DIR/data"
PIDFILE="$DIR/mariadb.pid"
LOG="$DIR/mariadb.log"
INIT_SQL="$DIR/init.sql"
SOCK="$DIR/mariadb.sock"
# A Unix socket path must stay under ~108 bytes; a deep run dir gets a short, stable name in /tmp instead.
if [ "${#SOCK}" -gt 100 ]; then
  SOCK="/tmp/movierec-mariadb-$(printf '%s' "$DIR" | sha256sum | cut -c1-16).sock"
fi

say() { echo "mariadb: $*"; }
die() { echo "mariadb: $*" >&2; exit 1; }
# shellcheck source=ops/pidfile.sh
. "$(dirname "${BASH_SOURCE[0]}")/pidfile.sh"

# The pid of this run dir's server if that process still runs (and really is our server), else nothing.
running_pid() { pid_if_running "--defaults-file=$CONF"; }


# SQL string literal: backslashes and quotes doubled.
sql_quote() {
  local s="${1//\\/\\\\}"
  printf "'%s'" "${s//\'/\'\'}"
}

write_config() {
  local user_line=""
  [ "$(id -u)" -eq 0 ] && user_line="user=root"
  cat >"$CONF" <<EOF
# Written by ops/mariadb.sh start: a private server on loopback, everything under $DIR.
[mariadbd]
$user_line
datadir=$DATA
socket=$SOCK
pid-file=$PIDFILE
log-error=$LOG
port=$PORT
bind-address=127.0.0.1
skip-name-resolve
default-time-zone='+00:00'
character-set-server=utf8mb4
collation-server=utf8mb4_unicode_ci
performance-schema=OFF
innodb-buffer-pool-size=64M
innodb-log-file-size=32M
max-connections=300

[client]
socket=$SOCK
port=$PORT
EOF
}

# Executed by the server at every start before it accepts clients: the admin account with the current password.
write_init_sql() {
  local user pw
  user="$(sql_quote "$ADMIN_USER")"
  pw="$(sql_quote "$ADMIN_PASSWORD")"
  (
    umask 077
    {
      echo "CREATE USER IF NOT EXISTS $user@'localhost';"
      echo "ALTER USER $user@'localhost' IDENTIFIED VIA mysql_native_password USING PASSWORD($pw) OR unix_socket;"
      for host in 127.0.0.1 ::1; do
        echo "CREATE USER IF NOT EXISTS $user@'$host';"
        echo "ALTER USER $user@'$host' IDENTIFIED BY $pw;"
      done
      for host in localhost 127.0.0.1 ::1; do
        echo "GRANT ALL PRIVILEGES ON *.* TO $user@'$host' WITH GRANT OPTION;"
      done
    } >"$INIT_SQL"
  )
}

initialise() {
  [ -f "$DATA/.initialised" ] && return 0
  rm -rf "$DATA"
  mkdir -p "$DATA"
  say "initialising $DATA"
  local user_arg=()
  [ "$(id -u)" -eq 0 ] && user_arg=(--user=root)
  if ! mariadb-install-db --no-defaults --datadir="$DATA" "${user_arg[@]}" --auth-root-authentication-method=normal \
        --skip-test-db --skip-name-resolve >"$DIR/install.log" 2>&1; then
    tail -n 30 "$DIR/install.log" >&2
    die "mariadb-install-db failed (log: $DIR/install.log)"
  fi
  touch "$DATA/.initialised"
}

start() {
  command -v mariadbd >/dev/null || [ -x /usr/sbin/mariadbd ] \
    || die "mariadbd not found (apt-get install mariadb-server, or: bash ops/system-deps.sh)"
  export PATH="$PATH:/usr/sbin"
  mkdir -p "$DIR"
  exec 9>"$DIR/.lock"
  flock 9
  local pid
  if pid="$(running_pid)"; then
    say "already running (pid $pid, 127.0.0.1:$PORT)"
    return 0
  fi
  rm -f "$PIDFILE"
  port_open "$PORT" && die "port $PORT is taken by another process (set MYSQL_PORT)"
  write_config
  initialise
  write_init_sql
  touch "$LOG"
  local mark
  mark="$(stat -c %s "$LOG")"
  echo "=== ops/mariadb.sh start $(date -u +%Y-%m-%dT%H:%M:%SZ) port=$PORT" >>"$LOG"
  # 9>&-: the server must not inherit the start lock, or the next `start` would wait for it forever.
  nohup mariadbd --defaults-file="$CONF" --init-file="$INIT_SQL" </dev/null >>"$LOG" 2>&1 9>&- &
  pid=$!
  echo "$pid" >"$PIDFILE"
  local started=$SECONDS
  while true; do
    if ! kill -0 "$pid" 2>/dev/null; then
      rm -f "$PIDFILE" "$INIT_SQL"
      tail -c +"$((mark + 1))" "$LOG" | tail -n 40 >&2
      die "server exited during start-up (log: $LOG)"
    fi
    # Ready = the server said so (after running the init file) and answers a ping on its TCP port.
    if tail -c +"$((mark + 1))" "$LOG" | grep -q "ready for connections" \
        && mariadb-admin --no-defaults --protocol=tcp -h 127.0.0.1 -P "$PORT" --connect-timeout=1 ping >/dev/null 2>&1
    then
      rm -f "$INIT_SQL"
      # The server reports a failed init-file statement as "ERROR: <code> ..." and carries on: not for us.
      if tail -c +"$((mark + 1))" "$LOG" | grep -qE "^ERROR: [0-9]+"; then
        tail -c +"$((mark + 1))" "$LOG" | grep -E "^ERROR: [0-9]+" | tail -n 10 >&2
        stop >/dev/null
        die "the admin account $ADMIN_USER could not be set up; server stopped (log: $LOG)"
      fi
      say "running (pid $pid, 127.0.0.1:$PORT, socket $SOCK, $((SECONDS - started)) s)"
      return 0
    fi
    if [ $((SECONDS - started)) -ge "$START_TIMEOUT" ]; then
      tail -c +"$((mark + 1))" "$LOG" | tail -n 40 >&2
      kill -KILL "$pid" 2>/dev/null || true
      rm -f "$PIDFILE" "$INIT_SQL"
      die "server not ready after ${START_TIMEOUT} s (log: $LOG)"
    fi
    sleep 0.1
  done
}

stop() { stop_by_pidfile; }

status() {
  local pid
  if pid="$(running_pid)"; then
    say "running (pid $pid, 127.0.0.1:$PORT, socket $SOCK)"
    return 0
  fi
  say "not running"
  return 3
}

client() {
  running_pid >/dev/null || die "not running (ops/mariadb.sh start)"
  local pw_arg=()
  [ -n "$ADMIN_PASSWORD" ] && pw_arg=("--password=$ADMIN_PASSWORD")
  exec mariadb --no-defaults --socket="$SOCK" -u "$ADMIN_USER" "${pw_arg[@]}" "$@"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  client) shift; client "$@" ;;
  *) echo "usage: $0 start|stop|status|client [mariadb args]" >&2; exit 2 ;;
esac
