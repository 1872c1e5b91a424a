# Stand-in for nginx/nginx-prometheus-exporter (Debian bookworm's prometheus-nginx-exporter), built by
# `ops/docker.sh bases`. Interface: entrypoint /usr/bin/nginx-prometheus-exporter, port 9113, the flag
# `--nginx.scrape-uri=URL` (Go's flag package takes the double dash too).
ARG DEBIAN_IMAGE=localhost/debian-base:bookworm
FROM ${DEBIAN_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends prometheus-nginx-exporter \
 && rm -rf /var/lib/apt/lists/* \
 && ln -s prometheus-nginx-exporter /usr/bin/nginx-prometheus-exporter
USER nobody
EXPOSE 9113
ENTRYPOINT ["/usr/bin/nginx-prometheus-exporter"]
