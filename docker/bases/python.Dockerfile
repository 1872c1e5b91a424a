# Stand-in for python:3.11-slim (Debian bookworm's Python 3.11), built by `ops/docker.sh bases`.
# Interface used by docker/*.Dockerfile: `python3` (and `python`) on PATH, `python3 -m venv`, useradd.
ARG DEBIAN_IMAGE=localhost/debian-base:bookworm
FROM ${DEBIAN_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && ln -s /usr/bin/python3 /usr/local/bin/python
ENV LANG=C.UTF-8
CMD ["python3"]
