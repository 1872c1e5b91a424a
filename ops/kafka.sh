#!/usr/bin/env bash
# A real Apache Kafka broker (KRaft, one node that is broker and controller) for tests and the demo.
#
#   ops/kafka.sh fetch    resolve the broker's jars from Maven Central into a cache folder (once)
#   ops/kafka.sh start    write the config, format the storage once, start in the background, wait until ready
#   ops/kafka.sh stop     stop exactly the broker of this run dir (by its pid) and wait for it to exit
#   ops/kafka.sh status   exit 0 and print the pid if it runs, exit 3 otherwise
#   ops/kafka.sh cluster-id [N]  print N fresh cluster ids (what `start` formats new storage with)
#
# Environment (defaults in brackets):
#   MOVIEREC_RUN_DIR      [<repo>/.run]   the broker lives in <run dir>/kafka/ (config, data, pid, log)
#   KAFKA_PORT            [9092]          client listener on 127.0.0.1
#   KAFKA_CONTROLLER_PORT [9193]          KRaft controller listener on 127.0.0.1 (9093/9094 are Alertmanager's)
#   KAFKA_LIBS_DIR        [~/.cache/movierec/kafka-libs]  jars, reused while ops/kafka/pom.xml is unchanged
#   KAFKA_HEAP_OPTS       [-Xms128m -Xmx512m]
#   KAFKA_START_TIMEOUT   [60]            seconds to wait for the broker to be ready
#   KAFKA_STOP_TIMEOUT    [30]            seconds to wait for a clean shutdown before SIGKILL
# Starting twice is harmless (the second start sees the first broker); data survive stop/start.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
POM="$HERE/kafka/pom.xml"
RUN_DIR="${MOVIEREC_RUN_DIR:-$ROOT/.run}"
DIR="$RUN_DIR/kafka"
PORT="${KAFKA_PORT:-9092}"
CPORT="${KAFKA_CONTROLLER_PORT:-9193}"
LIBS="${KAFKA_LIBS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/movierec/kafka-libs}"
HEAP="${KAFKA_HEAP_OPTS:--Xms128m -Xmx512m}"
START_TIMEOUT="${KAFKA_START_TIMEOUT:-60}"
STOP_TIMEOUT="${KAFKA_STOP_TIMEOUT:-30}"
PIDFILE="$DIR/kafka.pid"
LOG="$DIR/kafka.log"
CONF="$DIR/server.properties"

say() { echo "kafka: $*"; }
die() { echo "kafka: $*" >&2; exit 1; }
# shellcheck source=ops/pidfile.sh
. "$(dirname "${BASH_SOURCE[0]}")/pidfile.sh"

pom_stamp() { sha256sum "$POM" | cut -d' ' -f1; }

libs_ready() { [ -f "$LIBS/.stamp" ] && [ "$(cat "$LIBS/.stamp")" = "$(pom_stamp)" ]; }

# Java 17+ and Maven come from Debian's packages: installed here when root and missing.
ensure_tools() {
  command -v mvn >/dev/null && command -v java >/dev/null && return 0
  if [ "$(id -u)" -ne 0 ]; then
    die "java and mvn are needed: sudo apt-get install -y --no-install-recommends default-jre-headless maven"
  fi
  say "installing Debian packages: default-jre-headless maven"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends default-jre-headless maven >/dev/null
}

fetch() {
  if libs_ready; then
    say "jars cached in $LIBS"
    return 0
  fi
  ensure_tools
  mkdir -p "$(dirname "$LIBS")"
  # One fetch at a time per cache folder; a second caller waits and then finds the jars there.
  exec 8>"$LIBS.lock"
  flock 8
  if libs_ready; then
    say "jars cached in $LIBS"
    return 0
  fi
  local tmp="$LIBS.tmp.$$"
  rm -rf "$tmp"
  say "resolving $(grep -o '<kafka.version>[^<]*' "$POM" | cut -d'>' -f2) from Maven Central into $LIBS"
  if ! mvn -q -B -Dstyle.color=never -f "$POM" dependency:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$tmp" >"$tmp.mvn.log" 2>&1; then
    tail -n 30 "$tmp.mvn.log" >&2
    rm -rf "$tmp" "$tmp.mvn.log"
    die "fetch failed"
  fi
  rm -f "$tmp.mvn.log"
  pom_stamp >"$tmp/.stamp"
  rm -rf "$LIBS"
  mv "$tmp" "$LIBS"
  say "$(find "$LIBS" -name '*.jar' | wc -l) jars in $LIBS"
}

# The pid of this run dir's broker if that process still runs (and really is our broker), else nothing.
running_pid() { pid_if_running "kafka.Kafka $CONF"; }


write_config() {
  mkdir -p "$DIR/data"
  cat >"$CONF" <<EOF
# Written by ops/kafka.sh start: single-node KRaft (broker + controller) on loopback.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$CPORT
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CPORT
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$DIR/data
auto.create.topics.enable=true
num.partitions=1
default.replication.factor=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=2
log.retention.hours=168
EOF
  cat >"$DIR/log4j2.properties" <<'EOF'
# Written by ops/kafka.sh start: the broker's log goes to stdout, which the script sends to kafka.log.
status = warn
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = %d{ISO8601} %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.out.ref = out
logger.state.name = state.change.logger
logger.state.level = warn
logger.request.name = kafka.request.logger
logger.request.level = warn
EOF
}

java_cmd() {
  # The JVM and its options as an array in JAVA (the class path glob stays literal for java itself).
  read -r -a JAVA <<<"java $HEAP"
  JAVA+=(-XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true
    "-Dlog4j2.configurationFile=$DIR/log4j2.properties" -cp "$LIBS/*")
}

# A random cluster id: 16 random bytes, URL-safe base64 without padding (what Kafka's Uuid parses).
# Like Kafka's own Uuid.randomUuid, draw again while it starts with '-': the storage tool would read
# such an id as an option (1 start in 64 failed that way).
new_cluster_id() {
  local id="-"
  while [[ "$id" == -* ]]; do
    id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
  done
  printf '%s\n' "$id"
}

format_storage() {
  [ -f "$DIR/data/meta.properties" ] && return 0
  local cluster_id
  cluster_id="$(new_cluster_id)"
  say "formatting $DIR/data (cluster $cluster_id)"
  java_cmd
  if ! "${JAVA[@]}" kafka.tools.StorageTool format --cluster-id "$cluster_id" --config "$CONF" \
        --ignore-formatted >>"$LOG" 2>&1; then
    tail -n 30 "$LOG" >&2
    die "storage format failed (log: $LOG)"
  fi
}

start() {
  mkdir -p "$DIR"
  exec 9>"$DIR/.lock"
  flock 9
  local pid
  if pid="$(running_pid)"; then
    say "already running (pid $pid, 127.0.0.1:$PORT)"
    return 0
  fi
  rm -f "$PIDFILE"
  libs_ready || fetch
  command -v java >/dev/null || ensure_tools
  port_open "$PORT" && die "port $PORT is taken by another process (set KAFKA_PORT)"
  port_open "$CPORT" && die "port $CPORT is taken by another process (set KAFKA_CONTROLLER_PORT)"
  write_config
  format_storage
  # Keep the log bounded across many starts: one previous generation is kept beside it.
  if [ "$(stat -c %s "$LOG" 2>/dev/null || echo 0)" -gt $((50 * 1024 * 1024)) ]; then
    mv -f "$LOG" "$LOG.1"
  fi
  local mark
  mark="$(stat -c %s "$LOG" 2>/dev/null || echo 0)"
  echo "=== ops/kafka.sh start $(date -u +%Y-%m-%dT%H:%M:%SZ) port=$PORT controller=$CPORT" >>"$LOG"
  java_cmd
  nohup "${JAVA[@]}" kafka.Kafka "$CONF" </dev/null >>"$LOG" 2>&1 8>&- 9>&- &
  pid=$!
  echo "$pid" >"$PIDFILE"
  local started=$SECONDS
  while true; do
    if ! kill -0 "$pid" 2>/dev/null; then
      rm -f "$PIDFILE"
      tail -c +"$((mark + 1))" "$LOG" | tail -n 40 >&2
      die "broker exited during start-up (log: $LOG)"
    fi
    # Ready = the server says it started (it is unfenced by then) and the client port accepts.
    if tail -c +"$((mark + 1))" "$LOG" | grep -q "Kafka Server started" && port_open "$PORT"; then
      say "running (pid $pid, 127.0.0.1:$PORT, controller 127.0.0.1:$CPORT, $((SECONDS - started)) s)"
      return 0
    fi
    if [ $((SECONDS - started)) -ge "$START_TIMEOUT" ]; then
      tail -c +"$((mark + 1))" "$LOG" | tail -n 40 >&2
      kill -KILL "$pid" 2>/dev/null || true
      rm -f "$PIDFILE"
      die "broker not ready after ${START_TIMEOUT} s (log: $LOG)"
    fi
    sleep 0.2
  done
}

stop() { stop_by_pidfile; }

status() {
  local pid
  if pid="$(running_pid)"; then
    say "running (pid $pid, 127.0.0.1:$PORT)"
    return 0
  fi
  say "not running"
  return 3
}

case "${1:-}" in
  fetch) fetch ;;
  start) start ;;
  stop) stop ;;
  status) status ;;
  cluster-id) for _ in $(seq "${2:-1}"); do new_cluster_id; done ;;
  *) echo "usage: $0 fetch|start|stop|status|cluster-id" >&2; exit 2 ;;
esac
