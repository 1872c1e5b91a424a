#!/bin/sh
# Init job of compose.yml (service model-init): what `python -m ops.stack up` does natively before the
# slots start, by the same code (ops/bootstrap.py): on a fresh `models` volume the default data and model 1;
# then version.txt, every slot pointer of the topology (app/contracts/pointer.py) and NGINX's upstream
# weights (<run>/nginx/upstream.conf, app/contracts/topology.py). Idempotent: a pointer or an upstream file
# that exists is never touched (a canary release may have moved it).
set -eu
: "${MOVIEREC_MODELS_DIR:?}" "${MOVIEREC_DATA_DIR:?}" "${MOVIEREC_RUN_DIR:?}"
exec python -m ops.bootstrap --runtime compose
