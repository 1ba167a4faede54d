# syntax=docker/dockerfile:1
# sandgraph-infer serve: the OpenAI-compatible inference server, with the Vulkan loader and
# Mesa's lavapipe for CPU-only nodes and a fallback NVIDIA ICD for GPU nodes (the NVIDIA
# container toolkit mounts the driver when NVIDIA_DRIVER_CAPABILITIES includes graphics). The
# model is not baked in: mount it at /models (a PVC filled by `sandgraph-infer pull`). The
# build context is a root filesystem laid out by rootfs.sh (see host.Dockerfile).
FROM scratch
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="sandgraph-inference" \
      org.opencontainers.image.description="Sandgraph inference server: GGUF llama on wgpu (Vulkan) and CPU, OpenAI-compatible API" \
      org.opencontainers.image.source="deploy/docker/inference.Dockerfile" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
COPY --chown=0:0 rootfs/ /
ENV SANDGRAPH_MODEL=/models/SmolLM2-135M-Instruct.Q4_1.gguf \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility,graphics \
    XDG_CACHE_HOME=/tmp \
    HOME=/tmp
USER 10001:10001
EXPOSE 8000
# Drains on SIGTERM: stops accepting, finishes what is in flight (--shutdown-grace).
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=4s --start-period=60s --retries=3 \
  CMD ["/usr/local/bin/sandgraph-infer", "health", "--url", "http://127.0.0.1:8000/health"]
ENTRYPOINT ["/usr/local/bin/sandgraph-infer"]
CMD ["serve", "--listen", "0.0.0.0:8000", "--backend", "cpu"]
