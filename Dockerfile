# syntax=docker/dockerfile:1
# proxyrunner: the container entrypoint of MCP proxy pods.
# Build: docker build -t proxyrunner .   (the daemon runs as PID 1 and drains on SIGTERM)

ARG PYTHON_IMAGE=python:3.12.8-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/proxyrunner
WORKDIR /src
# Dependencies first, in their own layer: source changes do not reinstall them.
COPY pyproject.toml README.md ./
RUN mkdir proxyrunner && touch proxyrunner/__init__.py \
    && /opt/proxyrunner/bin/pip install --no-compile '.[demo]' \
    && /opt/proxyrunner/bin/pip uninstall -y proxyrunner
COPY proxyrunner ./proxyrunner
RUN /opt/proxyrunner/bin/pip install --no-deps --no-compile . \
    && /opt/proxyrunner/bin/python -m compileall -q -j 0 /opt/proxyrunner/lib

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="proxyrunner" \
      org.opencontainers.image.description="MCP proxy for running MCP servers at scale on Kubernetes"
# Byte-compiled at build time; nothing is written at run time, so a read-only root
# filesystem works (the chart mounts an emptyDir at /tmp).
ENV PATH=/opt/proxyrunner/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=build /opt/proxyrunner /opt/proxyrunner
USER 65532:65532
EXPOSE 8080
# Exec form: proxyrunner is PID 1 and receives SIGTERM itself (no shell in between).
ENTRYPOINT ["proxyrunner", "run"]
CMD ["--host", "0.0.0.0", "--log-format", "json"]
