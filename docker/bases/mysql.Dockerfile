# Stand-in for mysql:8 (MariaDB from Debian bookworm), built by `ops/docker.sh bases`.
# Interface of the official image that compose.yml uses: MYSQL_ROOT_PASSWORD (or MYSQL_ALLOW_EMPTY_PASSWORD),
# MYSQL_DATABASE, MYSQL_USER/MYSQL_PASSWORD, /docker-entrypoint-initdb.d/*.sql|*.sh on first start,
# data in /var/lib/mysql, port 3306 on every interface, `mysqladmin` for health checks.
ARG DEBIAN_IMAGE=localhost/debian-base:bookworm
FROM ${DEBIAN_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends mariadb-server mariadb-client \
 && rm -rf /var/lib/apt/lists/* \
 # the package's postinst created a password-less data directory: the entrypoint makes its own
 && rm -rf /var/lib/mysql && mkdir -p /var/lib/mysql /var/lib/mysql-files /run/mysqld /docker-entrypoint-initdb.d \
 && chown mysql:mysql /var/lib/mysql /var/lib/mysql-files /run/mysqld \
 && chmod 0700 /var/lib/mysql-files
COPY mysql.cnf /etc/mysql/mariadb.conf.d/90-container.cnf
COPY mysql.entrypoint.sh /usr/local/bin/docker-entrypoint.sh
VOLUME /var/lib/mysql
EXPOSE 3306
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["mariadbd"]
