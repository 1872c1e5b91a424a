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
#   MYSQL_ADMIN_USER      [movierec_admin]  the platform's admin account (applies the schema, makes the other
#                                        accounts), made sure of at every start with the password below, for
#                                        'localhost' (socket), '127.0.0.1' and '::1': all privileges with grant
#                                        option except FILE and SHUTDOWN. Never root (see below).
#   MYSQL_ADMIN_PASSWORD  [local-admin]  its password (app/settings.py has the same defaults); must not be empty
#   MARIADB_OS_USER       [mysql]        the unprivileged OS user the server runs as when started by root
#   MARIADB_START_TIMEOUT [30]           seconds to wait for the server to accept clients
#   MARIADB_STOP_TIMEOUT  [30]           seconds to wait for a clean shutdown before SIGKILL
#
# Least privilege (issue 12): started by root (how CI and `make up` run), the server runs as MARIADB_OS_USER
# (Debian's `mysql`), which owns the data dir; started by anyone else it runs as that user. MariaDB's root
# exists only as root@localhost IDENTIFIED VIA unix_socket: OS root over the socket, never over TCP, never
# with a password. `secure_file_priv` is <run dir>/mariadb/files (private, empty), so LOAD_FILE and
# SELECT ... INTO OUTFILE touch nothing else; `local_infile` is off.
#
# What the server itself writes (data/, files/, run/ with the socket) lives in its "server dir": the run dir's
# mariadb/ when the server user can reach it, else (a run dir under a 0700 directory such as pytest's, which
# pytest re-closes at every session) MARIADB_SERVER_BASE [/var/lib/movierec-mariadb]/<hash of the run dir>/.
# The choice is made once, at the first start, and kept in mariadb/server-dir. A start removes the server dirs
# there whose run dir is gone. my.cnf, the pid file and the log (the server's stderr) stay in the run dir,
# root's: the server user can neither rewrite its configuration nor plant a symlink for root to follow.
#
# Starting twice is harmless (the second start sees the first server); data survive stop/start. The
# application accounts and the schema are not made here: `python -m auto_deployment.schema apply`.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
RUN_DIR="${MOVIEREC_RUN_DIR:-$ROOT/.run}"
DIR="$RUN_DIR/mariadb"
PORT="${MYSQL_PORT:-3306}"
ADMIN_USER="${MYSQL_ADMIN_USER:-movierec_admin}"
ADMIN_PASSWORD="${MYSQL_ADMIN_PASSWORD-local-admin}"  # set but empty is refused, not defaulted
OS_USER="${MARIADB_OS_USER:-mysql}"
SERVER_BASE="${MARIADB_SERVER_BASE:-/var/lib/movierec-mariadb}"
START_TIMEOUT="${MARIADB_START_TIMEOUT:-30}"
STOP_TIMEOUT="${MARIADB_STOP_TIMEOUT:-30}"
CONF="$DIR/my.cnf"
PIDFILE="$DIR/mariadb.pid"
LOG="$DIR/mariadb.log"
MARKER="$DIR/server-dir"
HASH="$(printf '%s' "$DIR" | sha256sum | cut -c1-16)"

# DATA, FILES (secure_file_priv: the only directory LOAD_FILE / INTO OUTFILE may touch, kept empty), SOCK_DIR
# and SOCK under the server dir `$1`.
use_server_dir() {
  SERVER_DIR="$1"
  DATA="$SERVER_DIR/data"
  FILES="$SERVER_DIR/files"
  SOCK_DIR="$SERVER_DIR/run"
  SOCK="$SOCK_DIR/mariadb.sock"
  INIT_SQL="$SERVER_DIR/init.sql"  # root's directory: the server user reads it, cannot swap it
  # A Unix socket path must stay under ~108 bytes; a deep run dir gets a short, stable name in /tmp instead.
  if [ "${#SOCK}" -gt 100 ]; then
    SOCK="/tmp/movierec-mariadb-$HASH.sock"
  fi
}
use_server_dir "$(cat "$MARKER" 2>/dev/null || echo "$DIR")"

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

# The OS user the server runs as: MARIADB_OS_USER when we are root, else ourselves.
server_user() {
  if [ "$(id -u)" -eq 0 ]; then echo "$OS_USER"; else id -un; fi
}

# True when the server user can search (reach) directory $1 along its whole path.
server_user_reaches() {
  setpriv --reuid="$OS_USER" --regid="$(id -g "$OS_USER")" --clear-groups test -x "$1" 2>/dev/null
}

# Decide the server dir once per run dir (see the header) and remember it.
choose_server_dir() {
  if [ ! -f "$MARKER" ]; then
    local where="$DIR"
    if [ "$(id -u)" -eq 0 ] && ! server_user_reaches "$DIR"; then
      where="$SERVER_BASE/$HASH"
    fi
    echo "$where" >"$MARKER"
  fi
  use_server_dir "$(cat "$MARKER")"
}

# Server dirs under SERVER_BASE whose run dir no longer exists and whose server no longer runs.
collect_orphans() {
  [ -d "$SERVER_BASE" ] || return 0
  local dir owner
  for dir in "$SERVER_BASE"/*/; do
    [ -f "$dir/owner" ] || continue
    owner="$(cat "$dir/owner")"
    [ -e "$owner" ] && continue
    pgrep -f -- "--defaults-file=$owner/my.cnf" >/dev/null 2>&1 && continue
    say "removing $dir (its run dir $owner is gone)"
    rm -rf -- "$dir"
  done
}

# As root, the server user owns exactly what it writes: data, files, the socket dir.
prepare_dirs() {
  if [ "$SERVER_DIR" != "$DIR" ]; then
    [ ! -L "$SERVER_BASE" ] || die "$SERVER_BASE is a symbolic link"
    mkdir -p "$SERVER_BASE" && chmod 0711 "$SERVER_BASE"
    [ "$(stat -c %u "$SERVER_BASE")" -eq 0 ] || die "$SERVER_BASE is not owned by root"
    mkdir -p "$SERVER_DIR" && chmod 0711 "$SERVER_DIR"
    echo "$DIR" >"$SERVER_DIR/owner"
  fi
  mkdir -p "$DATA" "$FILES" "$SOCK_DIR"
  chmod 0700 "$DATA" "$FILES"
  [ "$(id -u)" -eq 0 ] || return 0
  id -u "$OS_USER" >/dev/null 2>&1 || die "OS user $OS_USER does not exist (apt-get install mariadb-server makes mysql)"
  chown -R "$OS_USER:" "$DATA" "$FILES" "$SOCK_DIR"
  server_user_reaches "$DATA" || die "$OS_USER cannot reach $DATA (a directory above it is closed to others)"
}

write_config() {
  local user_line=""
  [ "$(id -u)" -eq 0 ] && user_line="user=$OS_USER"
  cat >"$CONF" <<EOF
# Written by ops/mariadb.sh start: a private server on loopback. Errors go to stderr, i.e. $LOG.
[mariadbd]
$user_line
datadir=$DATA
socket=$SOCK
pid-file=$DATA/mariadbd.pid
port=$PORT
bind-address=127.0.0.1
skip-name-resolve
secure-file-priv=$FILES
local-infile=0
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

# Executed by the server at every start before it accepts clients: root only over the socket (also on a data
# dir initialised by an older version of this script, whose root logged in over loopback without a password),
# no anonymous account, the admin account with the current password.
write_init_sql() {
  local user pw host
  user="$(sql_quote "$ADMIN_USER")"
  pw="$(sql_quote "$ADMIN_PASSWORD")"
  host="$(uname -n)"
  [ "$host" = localhost ] && host=127.0.0.1  # never drop root@localhost below
  host="$(sql_quote "$host")"
  rm -f "$INIT_SQL"
  (
    umask 077
    {
      echo "DROP USER IF EXISTS 'root'@'127.0.0.1', 'root'@'::1', 'root'@'%', 'root'@$host;"
      echo "DROP USER IF EXISTS ''@'localhost', ''@$host;"
      echo "ALTER USER 'root'@'localhost' IDENTIFIED VIA unix_socket;"
      for h in localhost 127.0.0.1 ::1; do
        echo "CREATE USER IF NOT EXISTS $user@'$h';"
        echo "ALTER USER $user@'$h' IDENTIFIED BY $pw;"
        echo "GRANT ALL PRIVILEGES ON *.* TO $user@'$h' WITH GRANT OPTION;"
        echo "REVOKE FILE, SHUTDOWN ON *.* FROM $user@'$h';"
      done
    } >"$INIT_SQL"
  )
  # the server reads it after dropping root; the file stays in root's directory, removed once ready
  [ "$(id -u)" -eq 0 ] && chown "$OS_USER:" "$INIT_SQL"
  return 0
}

initialise() {
  # (data/.initialised: where versions before the server dir kept the mark)
  [ -f "$SERVER_DIR/.initialised" ] || [ -f "$DATA/.initialised" ] && return 0
  rm -rf "$DATA"
  prepare_dirs
  say "initialising $DATA"
  local user_arg=()
  [ "$(id -u)" -eq 0 ] && user_arg=(--user="$OS_USER")
  # root@localhost IDENTIFIED VIA unix_socket (the default method): OS root over the socket, nobody over TCP
  if ! mariadb-install-db --no-defaults --datadir="$DATA" "${user_arg[@]}" --auth-root-authentication-method=socket \
        --skip-test-db --skip-name-resolve >"$DIR/install.log" 2>&1; then
    tail -n 30 "$DIR/install.log" >&2
    die "mariadb-install-db failed (log: $DIR/install.log)"
  fi
  touch "$SERVER_DIR/.initialised"
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
  [ "$ADMIN_USER" != root ] || die "MYSQL_ADMIN_USER=root: root logs in only over the unix socket; name the platform's admin account"
  [ -n "$ADMIN_PASSWORD" ] || die "MYSQL_ADMIN_PASSWORD is empty: the admin account needs a password"
  port_open "$PORT" && die "port $PORT is taken by another process (set MYSQL_PORT)"
  [ "$(id -u)" -ne 0 ] || collect_orphans
  choose_server_dir
  write_config
  initialise
  prepare_dirs
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
  # the password through the environment, not the command line (where `ps` shows it)
  MYSQL_PWD="$ADMIN_PASSWORD" exec mariadb --no-defaults --socket="$SOCK" -u "$ADMIN_USER" "$@"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  client) shift; client "$@" ;;
  *) echo "usage: $0 start|stop|status|client [mariadb args]" >&2; exit 2 ;;
esac
