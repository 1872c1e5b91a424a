# Stand-in for prom/alertmanager (Debian bookworm's prometheus-alertmanager), built by `ops/docker.sh bases`.
# Interface of the official image: entrypoint /bin/alertmanager, config /etc/alertmanager/alertmanager.yml,
# data /alertmanager, user nobody, port 9093, amtool.
ARG DEBIAN_IMAGE=localhost/debian-base:bookworm
FROM ${DEBIAN_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends prometheus-alertmanager \
 && rm -rf /var/lib/apt/lists/* \
 && ln -s prometheus-alertmanager /usr/bin/alertmanager \
 && mkdir -p /alertmanager /etc/alertmanager && chown nobody:nogroup /alertmanager /etc/alertmanager
USER nobody
WORKDIR /alertmanager
VOLUME /alertmanager
EXPOSE 9093
ENTRYPOINT ["/bin/alertmanager"]
CMD ["--config.file=/etc/alertmanager/alertmanager.yml", "--storage.path=/alertmanager"]
