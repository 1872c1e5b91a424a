# Stand-in for apache/kafka (the broker of ops/kafka.sh: the jars of ops/kafka/pom.xml, which `ops/docker.sh
# bases` resolves with `ops/kafka.sh fetch` and puts in this build's context as libs/) on Debian bookworm's
# Java 17, built by `ops/docker.sh bases`. Interface of the official image that compose.yml relies on:
# CMD /etc/kafka/docker/run, the broker's settings as KAFKA_* variables (KAFKA_LOG_DIRS=... -> log.dirs=...),
# CLUSTER_ID, data in /var/lib/kafka/data owned by appuser (uid 1000), ports 9092/9093, and
# /opt/kafka/bin/kafka-topics.sh for the health check (here: only "does the client port accept").
ARG DEBIAN_IMAGE=localhost/debian-base:bookworm
FROM ${DEBIAN_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 1000 --user-group --no-create-home --home-dir /opt/kafka appuser \
 && mkdir -p /opt/kafka/libs /opt/kafka/bin /opt/kafka/config /etc/kafka/docker /var/lib/kafka/data \
 && chown -R appuser:appuser /var/lib/kafka /opt/kafka/config
COPY libs/ /opt/kafka/libs/
COPY kafka.run /etc/kafka/docker/run
COPY kafka.topics /opt/kafka/bin/kafka-topics.sh
COPY kafka.log4j2 /opt/kafka/config/log4j2.properties
RUN chmod 755 /etc/kafka/docker/run /opt/kafka/bin/kafka-topics.sh
USER appuser
VOLUME /var/lib/kafka/data
EXPOSE 9092 9093
CMD ["/etc/kafka/docker/run"]
