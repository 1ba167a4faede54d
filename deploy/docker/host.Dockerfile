# syntax=docker/dockerfile:1
# sandgraph serve: the API host with the built tool and agent components. The build context is
# a root filesystem laid out by rootfs.sh from binaries built on this machine (no base image can
# be pulled): the binary, the shared libraries it links, CA roots, passwd/group, and the
# mount points. Nothing runs as root; nothing is writable but the volumes the pod mounts.
FROM scratch
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="sandgraph-host" \
      org.opencontainers.image.description="Sandgraph API host: multi-agent graphs of sandboxed WebAssembly components" \
      org.opencontainers.image.source="deploy/docker/host.Dockerfile" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
COPY --chown=0:0 rootfs/ /
COPY --chown=10001:10001 rootfs.state/ /
ENV SANDGRAPH_LISTEN=0.0.0.0:8080 \
    SANDGRAPH_JOURNAL=/var/lib/sandgraph/journal \
    SANDGRAPH_TOOLS=/opt/sandgraph/tools,/opt/sandgraph/agents \
    SANDGRAPH_COMPONENTS=/opt/sandgraph/components \
    SANDGRAPH_CACHE_DIR=/var/cache/sandgraph \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
USER 10001:10001
EXPOSE 8080
VOLUME ["/var/lib/sandgraph", "/var/cache/sandgraph"]
# The API drains on SIGTERM (SANDGRAPH_SHUTDOWN_GRACE, 30 s by default).
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=4s --start-period=30s --retries=3 \
  CMD ["/usr/local/bin/sandgraph", "health", "--url", "http://127.0.0.1:8080/healthz"]
ENTRYPOINT ["/usr/local/bin/sandgraph"]
CMD ["serve"]
