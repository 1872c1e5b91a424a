#!/bin/sh
# Init job of compose.yml (service model-init): what `python -m ops.stack up` does natively before the
# slots start. On a fresh `models` volume it writes the default data and trains model 1; it then makes
# sure version.txt names the stable version and every slot pointer exists. Idempotent: a pointer that
# exists is never touched (a canary release may have moved it).
set -eu
models=${MOVIEREC_MODELS_DIR:?}
data=${MOVIEREC_DATA_DIR:?}
slots=${MOVIEREC_RUN_DIR:?}/slots
version_file=${MOVIEREC_VERSION_FILE:-$models/version.txt}
mkdir -p "$models" "$data" "$slots"

if ! ls -d "$models"/[0-9]* >/dev/null 2>&1; then
  if [ -z "$(ls -A "$data" 2>/dev/null)" ]; then
    echo "model-init: writing the default data to $data"
    python -m simulator.datasets world --out "$data"
  fi
  echo "model-init: training model 1 on $data"
  python -m auto_deployment train --data-dir "$data" --out "$models/1.tmp" --version 1
  mv "$models/1.tmp" "$models/1"
fi
[ -s "$version_file" ] || echo 1 >"$version_file"
stable=$(tr -d '[:space:]' <"$version_file")
[ -d "$models/$stable" ] || { echo "model-init: $version_file names $stable but $models/$stable is missing" >&2; exit 1; }
for slot in stable_1 stable_2 canary; do
  if [ ! -s "$slots/$slot" ]; then
    echo "$stable" >"$slots/$slot.tmp" && mv "$slots/$slot.tmp" "$slots/$slot"
    echo "model-init: pointed $slot at version $stable"
  fi
done
echo "model-init: stable version $stable; pointers: $(for s in stable_1 stable_2 canary; do printf '%s=%s ' "$s" "$(cat "$slots/$s")"; done)"
