# Stand-in for nginx:1.27 (Debian bookworm's nginx-light: upstream keepalive, stub_status), built by
# `ops/docker.sh bases`. Interface: /etc/nginx/nginx.conf, `nginx -g 'daemon off;'`, and what compose's command
# docker/nginx-run.sh uses (as in the official Debian-based image): sh, coreutils, /proc.
ARG DEBIAN_IMAGE=localhost/debian-base:bookworm
FROM ${DEBIAN_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends nginx-light \
 && rm -rf /var/lib/apt/lists/* \
 && ln -sf /dev/stdout /var/log/nginx/access.log && ln -sf /dev/stderr /var/log/nginx/error.log
EXPOSE 80
STOPSIGNAL SIGQUIT
CMD ["nginx", "-g", "daemon off;"]
