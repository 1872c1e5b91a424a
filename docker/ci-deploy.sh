#!/bin/sh
# The CI deploy job (.gitlab-ci.yml, job `deploy`; a shell runner on the serving host, with Docker):
#   1. builds the images of this commit and brings the compose project up to date: the init jobs are idempotent,
#      the inference slots are recreated one at a time (each healthy before the next, NGINX reloaded after each,
#      so no request fails), a slot keeps its pointer (a release may have moved it);
#   2. releases the version named by version.txt inside the project: `run --rm pipeline sh docker/deploy.sh N`
#      fetches models/N from the DVC remote into the `models` volume and runs the canary release there.
# Secrets (MYSQL_*_PASSWORD, GRAFANA_ADMIN_PASSWORD, SMTP_PASSWORD, SLACK_WEBHOOK_URL, AWS_*) are masked CI/CD
# variables: they reach compose through the environment only, are never written to a file or the job log
# (no `set -x`, no printenv). Settings: COMPOSE (the compose command; default docker compose, else
# docker-compose), COMPOSE_PROJECT_NAME, MOVIEREC_REPO (the checkout: version.txt, models/N.dvc; default .),
# DVC_REMOTE or DVC_REMOTE_DIR (the remote: a URL, or a local directory; default the repo's default remote
# ~/.cache/movierec/dvc-remote), DEPLOY_SERVICES (services to bring up; default every non-profile service).
set -eu
cd "$(dirname "$0")/.."
if [ -n "${COMPOSE:-}" ]; then
  compose=$COMPOSE
elif docker compose version >/dev/null 2>&1; then
  compose="docker compose"
else
  compose=docker-compose
fi
repo=${MOVIEREC_REPO:-.}
version=$(tr -d '[:space:]' <"$repo/version.txt")
case $version in
  ''|*[!0-9]*) echo "ci-deploy: $repo/version.txt names no version" >&2; exit 2 ;;
esac
export MOVIEREC_REPO=$repo
# The compose files: compose.yml unless COMPOSE_FILE names more (e.g. compose.yml:compose.ops.yml); both
# docker-compose 1.29 and Compose v2 read it, where an explicit -f would drop the others.
export COMPOSE_FILE=${COMPOSE_FILE:-compose.yml}
if [ -z "${DVC_REMOTE:-}" ] && [ -z "${DVC_REMOTE_DIR:-}" ]; then
  export DVC_REMOTE_DIR="$HOME/.cache/movierec/dvc-remote"
fi
echo "ci-deploy: version $version with $compose (project ${COMPOSE_PROJECT_NAME:-default})"
# shellcheck disable=SC2086  # word splitting of the command and the service lists is wanted
{
  $compose build
  # A fresh host: everything, in dependency order. A running one: only what is missing; nothing recreated yet.
  $compose up -d --no-build --no-recreate ${DEPLOY_SERVICES:-}
  # The one-shot init jobs (idempotent) with their new images first, alone: Compose v2 recreates the containers
  # that depend on a recreated service, so leaving them to the last `up` recreated every slot at once there
  # (329 of 3,828 requests answered 502/504 in the v2 deploy test).
  $compose up -d --no-build --no-deps $($compose config --services | grep -- '-init$')
  # The slots one at a time, each ready before the next, NGINX re-resolving its address after each (a recreated
  # container may get a new one): NGINX retries the others meanwhile, so no request fails.
  for slot in $($compose config --services | grep '^inference_'); do
    $compose up -d --no-build --no-deps "$slot"
    id=$($compose ps -q "$slot")
    tries=0
    until [ "$(docker inspect -f '{{.State.Health.Status}}' "$id")" = healthy ]; do
      tries=$((tries + 1))
      [ "$tries" -le 150 ] || { echo "ci-deploy: $slot not healthy after 300 s" >&2; exit 1; }
      sleep 2
    done
    $compose kill -s HUP nginx
    sleep 2
  done
  # The rest that changed (init jobs with new images, monitoring, ...); the slots are up to date by now.
  $compose up -d --no-build ${DEPLOY_SERVICES:-}
  $compose kill -s HUP nginx  # whatever was recreated last, NGINX resolves the slots' current addresses
}
# shellcheck disable=SC2086
$compose run --rm pipeline sh docker/deploy.sh "$version"
