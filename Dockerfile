# syntax=docker/dockerfile:1
# proxyrunner: the container entrypoint of MCP proxy pods.
# Build: docker build -t proxyrunner .   (the daemon runs as PID 1 and drains on SIGTERM)

# The CPython minor that requirements/ is locked for and CI tests (3.11, Linux x86_64).
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
# The locked pip and setuptools, in a venv of their own that the image does not ship.
COPY requirements/build.txt requirements/image.txt /tmp/requirements/
RUN python -m venv /opt/build \
    && /opt/build/bin/pip install --require-hashes --only-binary :all: \
       -r /tmp/requirements/build.txt
# Dependencies first, in their own layer: source changes do not reinstall them. Exactly
# the lock (runtime and demo dependencies), every wheel hash-checked; the runtime venv
# gets no pip or setuptools of its own.
RUN python -m venv --without-pip /opt/proxyrunner \
    && /opt/build/bin/pip --python /opt/proxyrunner/bin/python install --no-compile \
       --require-hashes --only-binary :all: -r /tmp/requirements/image.txt
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proxyrunner ./proxyrunner
# Built by the locked setuptools (no build isolation, so nothing unpinned is fetched).
RUN /opt/build/bin/pip wheel --no-deps --no-build-isolation --check-build-dependencies \
       --wheel-dir /tmp/dist . \
    && /opt/build/bin/pip --python /opt/proxyrunner/bin/python install --no-deps \
       --no-compile /tmp/dist/proxyrunner-*.whl \
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
