#!/bin/bash
# Entrypoint of the mysql stand-in: the subset of the official mysql image's entrypoint that compose.yml
# relies on. First start: initialise /var/lib/mysql, set the root password (root@localhost and root@'%'),
# create MYSQL_DATABASE and MYSQL_USER, run /docker-entrypoint-initdb.d/*. Then run the server in front.
set -euo pipefail

log() { echo "$(date -u +%FT%TZ) mysql-entrypoint: $*" >&2; }
sql_quote() { printf '%s' "$1" | sed -e 's/\\/\\\\/g' -e "s/'/\\\\'/g"; }

if [ "${1:0:1}" = "-" ]; then
  set -- mariadbd "$@"
fi

if [ "$1" = "mariadbd" ] || [ "$1" = "mysqld" ]; then
  datadir=/var/lib/mysql
  mkdir -p /run/mysqld
  chown mysql:mysql /run/mysqld "$datadir"
  if [ ! -d "$datadir/mysql" ]; then
    if [ -z "${MYSQL_ROOT_PASSWORD:-}" ] && [ -z "${MYSQL_ALLOW_EMPTY_PASSWORD:-}" ]; then
      log "database is uninitialized and MYSQL_ROOT_PASSWORD is not set"
      exit 1
    fi
    log "initialising $datadir"
    mariadb-install-db --user=mysql --datadir="$datadir" --skip-test-db \
      --auth-root-authentication-method=normal >/dev/null
    sock=/run/mysqld/init.sock
    mariadbd --user=mysql --datadir="$datadir" --skip-networking --socket="$sock" &
    pid=$!
    for _ in $(seq 1 60); do
      mariadb-admin --socket="$sock" ping >/dev/null 2>&1 && break
      sleep 0.5
    done
    root_pw=$(sql_quote "${MYSQL_ROOT_PASSWORD:-}")
    auth=(-uroot)
    [ -n "${MYSQL_ROOT_PASSWORD:-}" ] && auth+=("-p${MYSQL_ROOT_PASSWORD}")
    # install-db also made password-less root@127.0.0.1, root@::1, root@<hostname>: only root@localhost
    # stays (as in the official image), root@'%' is added with the password.
    extra=$(mariadb --socket="$sock" -uroot -N -B -e \
      "SELECT CONCAT(QUOTE(User), '@', QUOTE(Host)) FROM mysql.user WHERE User <> 'mariadb.sys' AND NOT (User = 'root' AND Host = 'localhost')")
    {
      for account in $extra; do echo "DROP USER $account;"; done
      echo "ALTER USER 'root'@'localhost' IDENTIFIED BY '$root_pw';"
      echo "CREATE USER 'root'@'%' IDENTIFIED BY '$root_pw';"
      echo "GRANT ALL ON *.* TO 'root'@'%' WITH GRANT OPTION;"
      if [ -n "${MYSQL_DATABASE:-}" ]; then
        echo "CREATE DATABASE IF NOT EXISTS \`${MYSQL_DATABASE}\`;"
      fi
      if [ -n "${MYSQL_USER:-}" ] && [ -n "${MYSQL_PASSWORD:-}" ]; then
        echo "CREATE USER '$(sql_quote "$MYSQL_USER")'@'%' IDENTIFIED BY '$(sql_quote "$MYSQL_PASSWORD")';"
        [ -n "${MYSQL_DATABASE:-}" ] && echo "GRANT ALL ON \`${MYSQL_DATABASE}\`.* TO '$(sql_quote "$MYSQL_USER")'@'%';"
      fi
      echo "FLUSH PRIVILEGES;"
    } | mariadb --socket="$sock" -uroot
    for f in /docker-entrypoint-initdb.d/*; do
      case "$f" in
        *.sql) log "running $f"; mariadb --socket="$sock" "${auth[@]}" ${MYSQL_DATABASE:+"$MYSQL_DATABASE"} <"$f" ;;
        *.sh)
          log "running $f"
          # shellcheck source=/dev/null
          . "$f"
          ;;
      esac
    done
    mariadb-admin --socket="$sock" "${auth[@]}" shutdown
    wait "$pid"
    log "initialised"
  fi
  set -- "$@" --user=mysql --datadir="$datadir"
fi

exec "$@"
