# syntax=docker/dockerfile:1
#
# health-sidecar: answers kubelet probes for the glucolens backend from cached PostgreSQL state.
#
#   docker build -t health-sidecar:0.2.0 .
#   docker run --rm -p 8081:8081 -e SIDECAR_DATABASE_URL=postgresql://... health-sidecar:0.2.0
#
# tests/test_dockerfile.py replays the build stage's ENV, WORKDIR, COPY and RUN lines in a fresh
# venv (this machine has no Docker engine), so keep them plain shell that works outside Docker.

# ---------------------------------------------------------------------------------------------
# Build stage: the project and its dependencies are installed into a venv at /opt/venv, the
# same path as in the runtime stage (a venv is not relocatable).
FROM python:3.11-slim-bookworm AS build

ENV VIRTUAL_ENV=/opt/venv \
    PATH="/opt/venv/bin:$PATH" \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv

WORKDIR /src

# Dependency layer before the code layer: it only changes when pyproject.toml does.
# The runtime dependencies are read from pyproject.toml itself, so there is no second list.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && pip install --no-cache-dir --no-compile --requirement /tmp/requirements.txt

# Code layer. --no-deps: everything it needs is already there, so nothing new is resolved here.
# Bytecode is compiled now because the root filesystem is read-only at run time; the
# unchecked-hash mode makes Python trust the .pyc without comparing mtimes with the source.
COPY sidecar/ sidecar/
RUN pip install --no-cache-dir --no-compile --no-deps . \
    && python -m compileall -q -j 0 --invalidation-mode unchecked-hash /opt/venv/lib

# ---------------------------------------------------------------------------------------------
# Runtime stage: the same base image (the .pyc files must match its interpreter), the venv
# copied whole, no compiler, no pip cache, no curl.
FROM python:3.11-slim-bookworm AS runtime

LABEL org.opencontainers.image.title="health-sidecar" \
      org.opencontainers.image.description="Kubernetes health sidecar for the glucolens backend: cached PostgreSQL readiness" \
      org.opencontainers.image.version="0.2.0" \
      org.opencontainers.image.licenses="Apache-2.0"

# The official image deletes the standard library's .pyc files; compile them once here so a
# read-only root filesystem does not make every start recompile asyncio, ssl, json and friends.
RUN python -m compileall -q -j 0 --invalidation-mode unchecked-hash /usr/local/lib/python3.11

COPY --from=build /opt/venv /opt/venv

ENV VIRTUAL_ENV=/opt/venv \
    PATH="/opt/venv/bin:$PATH" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SIDECAR_HOST=:: \
    SIDECAR_PORT=8081

# Numeric uid/gid (65532, "nonroot" in distroless images): Kubernetes' runAsNonRoot can only
# verify a numeric user, and no passwd entry is needed.
USER 65532:65532

EXPOSE 8081

# For plain Docker and Compose; Kubernetes ignores HEALTHCHECK and uses the chart's probes.
# /health never depends on the database, so an outage does not mark the container unhealthy.
#   interval 10s: the answer is cached, there is nothing to gain from polling faster;
#   timeout 3s: the probe client's own budget is 1-2 s, this leaves room for a cold start;
#   start-period 10s: Python imports on a busy host; retries 3: one slow answer is not a verdict.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["health-sidecar", "probe", "health"]

# Exec form: the sidecar is PID 1 and receives SIGTERM itself, then drains and exits 0.
ENTRYPOINT ["health-sidecar"]
