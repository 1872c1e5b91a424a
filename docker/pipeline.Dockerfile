# Pipeline image: `python -m auto_deployment ...` (train, run, release, schedule, audit), the schema job
# (`python -m auto_deployment.schema apply`), the first model (docker/model-init.sh), the release of a versioned
# bundle (docker/deploy.sh), the simulator, the online-evaluation exporter and the compose
# rendering of the configs that need secrets (`python -m ops.stack render --variant compose --out DIR`).
#
#   docker build -f docker/pipeline.Dockerfile -t movierec/pipeline .
#   --build-arg PYTHON_IMAGE=...   base image (default python:3.11-slim; `ops/docker.sh bases` builds a stand-in)
#   --build-arg CODE_COMMIT=...    recorded in model bundles and tracking rows
#
# Python packages come from wheelhouse/ when it holds wheels (`ops/docker.sh wheelhouse`), from PyPI otherwise.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS venv
WORKDIR /build
COPY requirements.txt wheelhouse* /build/wheelhouse/
COPY requirements.txt /build/
RUN set -eu; \
    if ls /build/wheelhouse/*.whl >/dev/null 2>&1; then from="--no-index --find-links /build/wheelhouse"; \
    else from=""; fi; \
    python3 -m venv /opt/venv; \
    /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check $from -r requirements.txt

FROM ${PYTHON_IMAGE}
# /srv/run/metrics is world-writable with the sticky bit: the `pipeline_metrics` volume starts as a copy of it,
# and the scheduler runs as any MOVIEREC_UID; the files there are Prometheus gauges, not secrets.
# /srv/run/nginx (the `upstream` volume) is writable by its owner and group 0, setgid: a release run by that
# scheduler (an arbitrary uid runs with gid 0) replaces upstream.conf, which model-init wrote, by rename;
# NGINX's workers cannot write there. docker/nginx-run.sh applies the same mode to older volumes.
# git: the version stage commits and DVC tracks data/ and models/ in a repository (MOVIEREC_REPO_DIR).
# NUMBA_CACHE_DIR: the sparse fit's compiled loop is cached where any uid can write (the code is read-only).
RUN apt-get update \
 && apt-get install -y --no-install-recommends git \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --home-dir /srv --no-create-home movierec \
 && mkdir -p /srv/models /srv/data /srv/run/slots /srv/run/nginx /srv/run/metrics /srv/config /srv/events /srv/checkout \
 && chown -R movierec:movierec /srv \
 && chmod 1777 /srv/run/metrics \
 && chgrp 0 /srv/run/nginx && chmod 2775 /srv/run/nginx
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    NUMBA_CACHE_DIR=/tmp/numba-cache \
    PYTHONPATH=/opt/movierec \
    MOVIEREC_DATA_DIR=/srv/data \
    MOVIEREC_MODELS_DIR=/srv/models \
    MOVIEREC_VERSION_FILE=/srv/models/version.txt \
    MOVIEREC_RUN_DIR=/srv/run
COPY --from=venv /opt/venv /opt/venv
WORKDIR /opt/movierec
COPY app/ app/
COPY auto_deployment/ auto_deployment/
COPY simulator/ simulator/
COPY ops/ ops/
COPY nginx/ nginx/
COPY monitoring/ monitoring/
COPY docker/model-init.sh docker/deploy.sh docker/
# Last: the commit changes with every build, and everything after it is rebuilt.
ARG CODE_COMMIT=unknown
ENV MOVIEREC_CODE_COMMIT=${CODE_COMMIT}
USER movierec
CMD ["python", "-m", "auto_deployment", "--help"]
