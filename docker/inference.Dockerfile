# Inference server image: `gunicorn -c app/gunicorn.conf.py 'app:create_app()'` (design section 10).
# One image for the three slots; compose.yml sets MOVIEREC_SLOT / MOVIEREC_PORT / MOVIEREC_POINTER per service.
#
#   docker build -f docker/inference.Dockerfile -t movierec/inference .
#   --build-arg PYTHON_IMAGE=...   base image (default python:3.11-slim; `ops/docker.sh bases` builds a stand-in)
#   --build-arg CODE_COMMIT=...    recorded in /version and in provenance rows
#
# Python packages come from wheelhouse/ when it holds wheels (`ops/docker.sh wheelhouse`: offline builds,
# `pip install --no-index`), from PyPI otherwise. Only app/ is copied: app/ never imports auto_deployment/.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS venv
WORKDIR /build
# `wheelhouse*` matches nothing when there is no wheelhouse: the build then installs from the index.
COPY requirements.txt wheelhouse* /build/wheelhouse/
COPY requirements.txt /build/
COPY docker/requirements-inference.txt /build/docker/
RUN set -eu; \
    if ls /build/wheelhouse/*.whl >/dev/null 2>&1; then from="--no-index --find-links /build/wheelhouse"; \
    else from=""; fi; \
    python3 -m venv /opt/venv; \
    /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check $from -r docker/requirements-inference.txt

FROM ${PYTHON_IMAGE}
# Models and slot pointers live in shared volumes (compose.yml), metrics and the provenance spool per container.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONPATH=/opt/movierec \
    MOVIEREC_HOST=0.0.0.0 \
    MOVIEREC_MODELS_DIR=/srv/models \
    MOVIEREC_RUN_DIR=/srv/run
RUN useradd --system --uid 10001 --user-group --home-dir /srv --no-create-home movierec \
 && mkdir -p /srv/models /srv/run/slots /srv/run/spool /srv/run/metrics \
 && chown -R movierec:movierec /srv
COPY --from=venv /opt/venv /opt/venv
WORKDIR /opt/movierec
COPY app/ app/
# Last: the commit changes with every build, and everything after it is rebuilt.
ARG CODE_COMMIT=unknown
ENV MOVIEREC_CODE_COMMIT=${CODE_COMMIT}
USER movierec
# Ready = a model is loaded and serving (GET /ready, design section 2).
HEALTHCHECK --interval=5s --timeout=3s --start-period=120s --retries=3 \
  CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/ready' % os.environ.get('MOVIEREC_PORT', '5001'), timeout=2)"]
CMD ["gunicorn", "-c", "app/gunicorn.conf.py", "app:create_app()"]
