# Service edge-metrics of compose.yml: mtail turning NGINX's edge log (app/contracts/edgelog.py, one line per
# request, on the `edge_log` volume) into Prometheus histograms per slot (monitoring/mtail/nginx.mtail), as the
# native stack's supervisor program does. mtail publishes no official image; Debian packages it, so this builds
# on DEBIAN_IMAGE (debian:bookworm-slim; ops/docker.sh points it at its debootstrapped base where no registry is).
ARG DEBIAN_IMAGE=debian:bookworm-slim
FROM ${DEBIAN_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends mtail \
 && rm -rf /var/lib/apt/lists/*
USER nobody
EXPOSE 3903
ENTRYPOINT ["mtail"]
