# Stand-in for prom/prometheus (Debian bookworm's prometheus), built by `ops/docker.sh bases`.
# Interface of the official image: entrypoint /bin/prometheus, config /etc/prometheus, data /prometheus,
# user nobody, port 9090.
ARG DEBIAN_IMAGE=localhost/debian-base:bookworm
FROM ${DEBIAN_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends prometheus \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /prometheus /etc/prometheus && chown nobody:nogroup /prometheus /etc/prometheus
USER nobody
WORKDIR /prometheus
VOLUME /prometheus
EXPOSE 9090
ENTRYPOINT ["/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
