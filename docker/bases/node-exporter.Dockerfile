# Stand-in for prom/node-exporter (Debian bookworm's prometheus-node-exporter), built by `ops/docker.sh bases`.
# Interface of the official image: entrypoint /bin/node_exporter, user nobody, port 9100.
ARG DEBIAN_IMAGE=localhost/debian-base:bookworm
FROM ${DEBIAN_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends prometheus-node-exporter \
 && rm -rf /var/lib/apt/lists/* \
 && ln -s prometheus-node-exporter /usr/bin/node_exporter
USER nobody
EXPOSE 9100
ENTRYPOINT ["/bin/node_exporter"]
