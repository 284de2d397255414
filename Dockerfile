# syntax=docker/dockerfile:1
# The gateway node's image: gwc-runtime (and the gwc CLI) in a virtualenv on a small Python base,
# run as a non-root user, writing nothing outside its state folder and /tmp, so it runs with a
# read-only root filesystem (deploy/kubernetes mounts those two as emptyDir volumes).
#
#   docker build -t gwc:0.1.0 .
#   docker run --rm -p 8080:8080 -e GWC_BUNDLE=... -e GWC_TRUST=... gwc:0.1.0
#
# Without a registry of base images it cannot be built: tests/deploy/pod.py does what these stages do
# in a temporary folder, and tests/deploy/test_pod.py starts a node from that as the Deployment would.
ARG PYTHON_IMAGE=python:3.12-slim-bookworm

# Stage 1: build the wheel and install it, with its dependencies, into /opt/gwc.
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY runtime ./runtime
COPY compiler ./compiler
# The venv has no pip of its own: the build stage's pip installs into it (--python), so the
# final stage carries neither pip nor setuptools nor wheel in /opt/gwc.
RUN python -m pip wheel --no-deps --wheel-dir /wheels . \
    && python -m venv --without-pip /opt/gwc \
    && python -m pip --python /opt/gwc/bin/python install --compile "$(ls /wheels/gwc-*.whl)[fast,otel]"

# Stage 2: the base image and the venv, nothing else (no compiler, no wheel, no sources).
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="gwc-runtime" \
      org.opencontainers.image.description="A GitOps-compiled MCP gateway node" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 gwc \
    && useradd --system --uid 10001 --gid gwc --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin gwc \
    && mkdir -p /var/lib/gwc \
    && chown gwc:gwc /var/lib/gwc
COPY --from=build /opt/gwc /opt/gwc
ENV PATH=/opt/gwc/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GWC_LISTEN=0.0.0.0:8080 \
    GWC_STATE_DIR=/var/lib/gwc
USER 10001:10001
WORKDIR /var/lib/gwc
VOLUME ["/var/lib/gwc"]
EXPOSE 8080
# Kubernetes ignores HEALTHCHECK (it has its own probes: /healthz and /readyz); docker and
# compose use it. Python's urllib, since the slim base has no curl.
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('GWC_LISTEN', '0.0.0.0:8080').rpartition(':')[2]; urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=2)"]
ENTRYPOINT ["gwc-runtime"]
