#!/bin/sh
# Release of a versioned bundle inside the compose project (service `pipeline`; the CI deploy job runs
#   docker compose -f compose.yml run --rm pipeline sh docker/deploy.sh <version> [release options]).
#
# 1. The bundle: models/<version> on the shared `models` volume, else fetched from the DVC remote with the
#    ordinary DVC client. The .dvc file comes from the checkout of the version commit (read-only at
#    $MOVIEREC_CHECKOUT); the remote is $DVC_REMOTE (s3://..., credentials from the environment) or the
#    local-directory remote mounted at /srv/dvc-remote. DVC checks the content hashes; the copy lands beside
#    its final folder and is renamed into it, so a slot never sees half a bundle.
# 2. The release: `python -m auto_deployment release --candidate <version> --runtime compose`, which verifies
#    the bundle, points the canary at it on the `slots` volume (the canary checks it against its tracking row),
#    observes it through Prometheus and promotes or aborts (design section 6). Its exit code is this script's.
# Nothing secret is printed: the settings come from the environment, never from the command line.
set -eu
version=${1:?usage: deploy.sh VERSION [release options]}
shift
case $version in
  ''|*[!0-9]*) echo "deploy: the version must be a number, not '$version'" >&2; exit 2 ;;
esac
models=${MOVIEREC_MODELS_DIR:-/srv/models}
checkout=${MOVIEREC_CHECKOUT:-/srv/checkout}
target=$models/$version

if [ -d "$target" ]; then
  echo "deploy: models/$version is on the models volume already"
else
  dvcfile=$checkout/models/$version.dvc
  if [ ! -f "$dvcfile" ]; then
    echo "deploy: $dvcfile is missing: the checkout is not a commit that versioned model $version" >&2
    exit 2
  fi
  remote=${DVC_REMOTE:-/srv/dvc-remote}
  export DVC_NO_ANALYTICS=1
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  echo "deploy: fetching models/$version from the DVC remote"
  (
    cd "$work"
    dvc init --no-scm -q
    dvc remote add -q -d origin "$remote"
    mkdir models
    cp "$dvcfile" models/
    dvc pull -q "models/$version.dvc"
  )
  partial=$models/.$version.partial
  rm -rf "$partial"
  cp -R "$work/models/$version" "$partial"
  mv "$partial" "$target"
  echo "deploy: models/$version fetched"
fi
exec python -m auto_deployment release --candidate "$version" --runtime compose "$@"
