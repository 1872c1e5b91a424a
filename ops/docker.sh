#!/usr/bin/env bash
# compose.yml on a machine with no Docker daemon running and no image registry reachable.
#
#   ops/docker.sh deps        install docker.io docker-compose debootstrap iptables (root, when missing)
#   ops/docker.sh start       start a Docker engine (dockerd) unless one answers already; pid in the state dir
#   ops/docker.sh stop        stop the engine *this script* started (by its pid file); any other is left alone
#   ops/docker.sh status      does an engine answer, and is it ours
#   ops/docker.sh bases       build Debian-based stand-ins for the public base images (cached by content hash)
#   ops/docker.sh wheelhouse  build wheels on the host into wheelhouse/ (cached) for `pip install --no-index`
#   ops/docker.sh env         print the variables that point compose.yml at the stand-ins
#   ops/docker.sh services    the compose services that run with the stand-ins (all but $LOCAL_SKIP)
#   ops/docker.sh compose ARGS...  docker-compose -f compose.yml ARGS... with the stand-ins
#   ops/docker.sh up | down   start engine + bases + wheelhouse + `compose up -d --build` / `compose down`
#   ops/docker.sh compose-v2  build Compose v2 ($COMPOSE_V2_VERSION) from its Go module (go install) and print its
#                             path: COMPOSE=<that path> makes `compose` use it instead of Debian's docker-compose 1.29
#
# Why stand-ins: compose.yml takes every base image as a variable with the public default
# (python:3.11-slim, mysql:8, nginx:1.27, prom/prometheus, ...). Where those cannot be pulled, `bases`
# debootstraps Debian bookworm once, imports it as localhost/debian-base:bookworm and builds one small
# image per public base from Debian's packages (docker/bases/*.Dockerfile), with the same interface
# (entrypoint, paths, ports, environment) that compose.yml relies on. Grafana and cAdvisor have no Debian
# package: `services` leaves them out here ($LOCAL_SKIP); with a registry, compose.yml runs them as usual.
# Kafka's stand-in runs the jars of ops/kafka/pom.xml (the broker of ops/kafka.sh) on Debian's Java 17.
#
# Settings (environment): MOVIEREC_RUN_DIR (state under <run>/docker), DOCKER_DATA_ROOT (/var/lib/docker),
# DOCKER_STORAGE_DRIVER (overlay2), DEBIAN_MIRROR (default: this machine's apt mirror), DOCKER, COMPOSE,
# COMPOSE_PROJECT_NAME, LOCAL_SKIP ("grafana cadvisor node-exporter scheduler pipeline simulator"),
# KAFKA_LIBS_DIR (the broker's jars, ops/kafka.sh).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUN_DIR=${MOVIEREC_RUN_DIR:-$ROOT/.run}
STATE=$RUN_DIR/docker
PIDFILE=$STATE/dockerd.pid
DOCKER=${DOCKER:-docker}
DATA_ROOT=${DOCKER_DATA_ROOT:-/var/lib/docker}
STORAGE_DRIVER=${DOCKER_STORAGE_DRIVER:-overlay2}
# exported: compose.yml builds edge-metrics FROM ${DEBIAN_IMAGE} (with_bases_env skips variables already set here)
export DEBIAN_IMAGE=localhost/debian-base:bookworm
BASE_PREFIX=localhost/movierec-base
# The profile services (scheduler, pipeline, simulator, node-exporter, cadvisor), which `config --services` of
# compose 1.29 lists all the same: they are started by name (`--profile`, `run`) when wanted.
LOCAL_SKIP=${LOCAL_SKIP:-grafana cadvisor node-exporter scheduler pipeline simulator}
WHEELHOUSE=$ROOT/wheelhouse
COMPOSE_V2_VERSION=${COMPOSE_V2_VERSION:-v2.29.7}
# Requirements the images install; the wheelhouse is rebuilt when one of them changes.
REQUIREMENTS=("$ROOT/requirements.txt" "$ROOT/docker/requirements-inference.txt")

log() { printf '%s docker.sh %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

compose_cmd() {
  if [ -n "${COMPOSE:-}" ]; then
    read -r -a cmd <<<"$COMPOSE"
  elif command -v docker-compose >/dev/null 2>&1; then
    cmd=(docker-compose)
  else
    cmd=("$DOCKER" compose)
  fi
  printf '%s\n' "${cmd[@]}"
}

engine_answers() { "$DOCKER" info >/dev/null 2>&1; }

our_pid() {
  # Pid of the dockerd this script started, if it is alive and really a dockerd (pids get reused).
  local pid
  pid=$(cat "$PIDFILE" 2>/dev/null) || return 1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q dockerd || return 1
  echo "$pid"
}

cmd_deps() {
  local want=(docker.io docker-compose debootstrap iptables) missing=() pkg
  for pkg in "${want[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing Debian packages: ${missing[*]}" >&2
    echo "install them with: sudo apt-get update && sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
    return 1
  fi
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # policy-rc.d keeps the packages from starting their own services: the engine is started by `start`.
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' RETURN
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

cmd_start() {
  local pid
  if pid=$(our_pid); then
    echo "engine already running (pid $pid, started by ops/docker.sh)"
    return 0
  fi
  if engine_answers; then
    echo "engine already running (not started by ops/docker.sh; left alone)"
    return 0
  fi
  command -v dockerd >/dev/null 2>&1 || cmd_deps
  [ "$(id -u)" -eq 0 ] || die "starting dockerd needs root"
  mkdir -p "$STATE"
  rm -f "$PIDFILE"
  log "starting dockerd (data root $DATA_ROOT, storage $STORAGE_DRIVER, log $STATE/dockerd.log)"
  # setsid: the engine outlives this script and the caller's process group; it writes its own pid file.
  setsid dockerd --data-root "$DATA_ROOT" --storage-driver="$STORAGE_DRIVER" \
    -H unix:///var/run/docker.sock --pidfile "$PIDFILE" >>"$STATE/dockerd.log" 2>&1 </dev/null &
  local deadline=$((SECONDS + 60))
  until engine_answers; do
    if [ $SECONDS -ge $deadline ]; then
      tail -20 "$STATE/dockerd.log" >&2
      die "dockerd did not answer within 60 s"
    fi
    sleep 0.5
  done
  pid=$(our_pid) || die "dockerd answers but its pid file $PIDFILE does not name it"
  echo "started dockerd (pid $pid)"
}

cmd_stop() {
  local pid
  if ! pid=$(our_pid); then
    echo "no engine started by ops/docker.sh is running"
    rm -f "$PIDFILE"
    return 0
  fi
  log "stopping dockerd (pid $pid)"
  kill -TERM "$pid"
  local deadline=$((SECONDS + 90))
  while kill -0 "$pid" 2>/dev/null; do
    [ $SECONDS -ge $deadline ] && die "dockerd (pid $pid) still running after 90 s; see $STATE/dockerd.log"
    sleep 0.5
  done
  rm -f "$PIDFILE"
  echo "stopped dockerd (pid $pid)"
}

cmd_status() {
  local pid
  if pid=$(our_pid); then
    echo "engine running (pid $pid, started by ops/docker.sh)"
  elif engine_answers; then
    echo "engine running (not started by ops/docker.sh)"
  else
    echo "no engine answers"
    return 3
  fi
}

image_label() {  # image label -> value ('' when the image or label is missing)
  "$DOCKER" image inspect -f "{{ index .Config.Labels \"$2\" }}" "$1" 2>/dev/null | sed 's/^<no value>$//' || true
}

debian_mirror() {
  if [ -n "${DEBIAN_MIRROR:-}" ]; then echo "$DEBIAN_MIRROR"; return; fi
  local m=""
  [ -f /etc/apt/sources.list.d/debian.sources ] && m=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources)
  [ -z "$m" ] && [ -f /etc/apt/sources.list ] && m=$(awk '$1=="deb"{print $2; exit}' /etc/apt/sources.list)
  echo "${m:-http://deb.debian.org/debian}"
}

build_debian_base() {
  if "$DOCKER" image inspect "$DEBIAN_IMAGE" >/dev/null 2>&1; then
    log "$DEBIAN_IMAGE present"
    return 0
  fi
  command -v debootstrap >/dev/null 2>&1 || cmd_deps
  local mirror rootfs started=$SECONDS
  mirror=$(debian_mirror)
  rootfs=$(mktemp -d /tmp/movierec-rootfs.XXXXXX)
  log "debootstrap bookworm from $mirror into $rootfs"
  if ! debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$STATE/debootstrap.log" 2>&1; then
    tail -20 "$STATE/debootstrap.log" >&2
    rm -rf "$rootfs"
    die "debootstrap failed (log $STATE/debootstrap.log)"
  fi
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  # As Debian's own container images: no service starts inside a build, no recommends, no apt cache.
  printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
  chmod +x "$rootfs/usr/sbin/policy-rc.d"
  printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' >"$rootfs/etc/apt/apt.conf.d/90container"
  printf 'Dir::Cache::pkgcache "";\nDir::Cache::srcpkgcache "";\n' >>"$rootfs/etc/apt/apt.conf.d/90container"
  tar -C "$rootfs" -c . | "$DOCKER" import --change 'CMD ["/bin/bash"]' - "$DEBIAN_IMAGE" >/dev/null
  rm -rf "$rootfs"
  log "built $DEBIAN_IMAGE in $((SECONDS - started)) s"
}

base_names() {
  local f
  for f in "$ROOT"/docker/bases/*.Dockerfile; do basename "$f" .Dockerfile; done
}

base_var() { echo "$(echo "$1" | tr 'a-z-' 'A-Z_')_IMAGE"; }   # node-exporter -> NODE_EXPORTER_IMAGE

cmd_bases() {
  engine_answers || die "no Docker engine answers (ops/docker.sh start)"
  mkdir -p "$STATE"
  build_debian_base
  local name tag hash started
  for name in $(base_names); do
    tag=$BASE_PREFIX/$name:bookworm
    # Content hash of the stand-in's Dockerfile and its helper files (and, for Kafka, of the pom that names the
    # broker's jars): a change rebuilds, nothing else does.
    hash=$( { cat "$ROOT"/docker/bases/"$name".*; [ "$name" != kafka ] || cat "$ROOT/ops/kafka/pom.xml"; } |
            sha256sum | cut -c1-16)
    if [ "$(image_label "$tag" movierec.base.hash)" = "$hash" ]; then
      log "$tag up to date"
      continue
    fi
    started=$SECONDS
    log "building $tag"
    local context=$ROOT/docker/bases
    if [ "$name" = kafka ]; then context=$(kafka_context); fi
    if ! "$DOCKER" build -q -f "$ROOT/docker/bases/$name.Dockerfile" --build-arg "DEBIAN_IMAGE=$DEBIAN_IMAGE" \
        --label "movierec.base.hash=$hash" -t "$tag" "$context" >"$STATE/base-$name.log" 2>&1; then
      tail -30 "$STATE/base-$name.log" >&2
      die "building $tag failed (log $STATE/base-$name.log)"
    fi
    [ "$context" = "$ROOT/docker/bases" ] || rm -rf "$context"
    log "built $tag in $((SECONDS - started)) s"
  done
  cmd_env >"$STATE/bases.env"
  log "wrote $STATE/bases.env"
}

kafka_context() {
  # The Kafka stand-in's build context: its helper files and the broker's jars, resolved on the host by
  # ops/kafka.sh fetch (cached in KAFKA_LIBS_DIR) because builds reach Debian's mirror but not Maven Central.
  local libs=${KAFKA_LIBS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/movierec/kafka-libs} context
  bash "$ROOT/ops/kafka.sh" fetch >&2 || die "ops/kafka.sh fetch failed"
  context=$(mktemp -d /tmp/movierec-kafka-base.XXXXXX)
  cp "$ROOT"/docker/bases/kafka.* "$context/"
  mkdir "$context/libs"
  cp "$libs"/*.jar "$context/libs/"
  echo "$context"
}

cmd_env() {
  local name
  for name in $(base_names); do echo "$(base_var "$name")=$BASE_PREFIX/$name:bookworm"; done
  # images compose.yml builds from Debian itself (edge-metrics: Debian's mtail) start from the debootstrapped base
  echo "DEBIAN_IMAGE=$DEBIAN_IMAGE"
}

requirements_hash() { cat "${REQUIREMENTS[@]}" | sha256sum | cut -c1-16; }

cmd_wheelhouse() {
  local py=$ROOT/.venv/bin/python hash started=$SECONDS
  [ -x "$py" ] || py=python3
  hash=$(requirements_hash)
  if [ "$(cat "$WHEELHOUSE/.stamp" 2>/dev/null)" = "$hash" ]; then
    log "wheelhouse up to date ($(find "$WHEELHOUSE" -name '*.whl' | wc -l) wheels)"
    return 0
  fi
  mkdir -p "$WHEELHOUSE"
  local args=()
  for f in "${REQUIREMENTS[@]}"; do args+=(-r "$f"); done
  log "building wheels into $WHEELHOUSE"
  # Host Python 3.11 builds cp311 wheels; the images run Python 3.11 on Debian bookworm (same glibc).
  "$py" -m pip wheel -q --disable-pip-version-check "${args[@]}" -w "$WHEELHOUSE" --find-links "$WHEELHOUSE"
  echo "$hash" >"$WHEELHOUSE/.stamp"
  log "wheelhouse ready: $(find "$WHEELHOUSE" -name '*.whl' | wc -l) wheels in $((SECONDS - started)) s"
}

with_bases_env() {
  # Export the stand-in image variables (unless the caller set them), then run "$@".
  local line var
  while IFS= read -r line; do
    var=${line%%=*}
    [ -n "${!var:-}" ] || export "${line?}"
  done < <(cmd_env)
  export CODE_COMMIT=${CODE_COMMIT:-$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)}
  "$@"
}

cmd_compose() {
  local cmd
  mapfile -t cmd < <(compose_cmd)
  cd "$ROOT"
  with_bases_env "${cmd[@]}" -f "$ROOT/compose.yml" "$@"
}

cmd_services() {
  local svc skip
  for svc in $(cmd_compose config --services); do
    for skip in $LOCAL_SKIP; do [ "$svc" = "$skip" ] && continue 2; done
    echo "$svc"
  done
}

cmd_up() {
  cmd_deps
  cmd_start
  cmd_bases
  cmd_wheelhouse
  # shellcheck disable=SC2046
  cmd_compose up -d --build $(cmd_services)
}

cmd_down() { cmd_compose down "$@"; }

cmd_compose_v2() {
  # Debian packages only docker-compose 1.29; Compose v2 builds from its Go module with the Go toolchain.
  local bin=$STATE/compose-$COMPOSE_V2_VERSION
  if [ ! -x "$bin/docker-compose" ]; then
    command -v go >/dev/null 2>&1 || die "Go is needed to build Compose v2 (https://go.dev/dl or apt-get install golang)"
    mkdir -p "$bin"
    log "building Compose $COMPOSE_V2_VERSION from github.com/docker/compose/v2 (minutes)"
    GOBIN=$bin GOFLAGS=-trimpath go install "github.com/docker/compose/v2/cmd@$COMPOSE_V2_VERSION" >&2
    mv "$bin/cmd" "$bin/docker-compose"
  fi
  echo "$bin/docker-compose"
}

main() {
  local command=${1:-}
  [ $# -gt 0 ] && shift
  case "$command" in
    deps) cmd_deps ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    bases) cmd_bases ;;
    wheelhouse) cmd_wheelhouse ;;
    env) cmd_env ;;
    services) cmd_services ;;
    compose) cmd_compose "$@" ;;
    up) cmd_up ;;
    down) cmd_down "$@" ;;
    compose-v2) cmd_compose_v2 ;;
    *) awk 'NR > 1 && !/^#/ { exit } NR > 1' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; [ -z "$command" ] || exit 2 ;;
  esac
}

main "$@"
