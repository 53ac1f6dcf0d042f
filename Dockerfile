# syntax=docker/dockerfile:1
#
# health-sidecar: answers kubelet probes for the glucolens backend from cached PostgreSQL state.
#
#   docker build -t health-sidecar:0.3.0 .
#   docker run --rm -p 8081:8081 --read-only \
#       -v "$PWD/dsn:/etc/health-sidecar/dsn:ro" \
#       -e SIDECAR_DATABASE_URL_FILE=/etc/health-sidecar/dsn health-sidecar:0.3.0
#
# The DSN comes from a file (mode 0440, readable by gid 65532), never from the command line or
# the environment, where `ps`, `docker inspect` and shell history would show the password.
#
# tests/test_dockerfile.py replays the build stage's ENV, WORKDIR, COPY and RUN lines in a fresh
# venv (this machine has no Docker engine), so keep them plain shell that works outside Docker;
# tests/test_image.py builds the image itself with buildah.

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
#
# Then the venv is trimmed to what runs: pip, setuptools and wheel go (nothing installs at run
# time), and so do test suites, C/Cython sources and type stubs shipped inside wheels.
COPY sidecar/ sidecar/
RUN pip install --no-cache-dir --no-compile --no-deps . \
    && pip uninstall --yes --quiet pip setuptools wheel \
    && find /opt/venv/lib \( -type d \( -name tests -o -name __pycache__ \) -prune \
        -exec rm -rf {} + \) \
    && find /opt/venv/lib -type f \( -name '*.c' -o -name '*.h' -o -name '*.pyx' \
        -o -name '*.pxd' -o -name '*.pxi' -o -name '*.pyi' -o -name '*.cpp' \) -delete \
    && rm -f /opt/venv/bin/activate* /opt/venv/bin/pip* \
    && python -m compileall -q -j 0 --invalidation-mode unchecked-hash /opt/venv/lib

# ---------------------------------------------------------------------------------------------
# Runtime stage: the same base image (the .pyc files must match its interpreter), the venv
# copied whole, no compiler, no pip cache, no curl.
FROM python:3.11-slim-bookworm AS runtime

LABEL org.opencontainers.image.title="health-sidecar" \
      org.opencontainers.image.description="Kubernetes health sidecar for the glucolens backend: cached PostgreSQL readiness" \
      org.opencontainers.image.version="0.3.0" \
      org.opencontainers.image.licenses="Apache-2.0"

# The official image deletes the standard library's .pyc files; compile them once here so a
# read-only root filesystem does not make every start recompile asyncio, ssl, json and friends.
# The base's own pip, setuptools and wheel go too: nothing installs at run time. Paths are asked
# of the interpreter, so any Python 3.11 base works.
RUN stdlib="$(python -c "import sysconfig; print(sysconfig.get_path('stdlib'))")" \
    && sites="$(python -c "import site; print(' '.join(site.getsitepackages()))")" \
    && for site in $sites; do \
        rm -rf "$site"/pip "$site"/pip-* "$site"/setuptools "$site"/setuptools-* \
            "$site"/wheel "$site"/wheel-* "$site"/_distutils_hack "$site"/distutils-precedence.pth; \
    done \
    && rm -f /usr/local/bin/pip* /usr/bin/pip* \
    && python -m compileall -q -j 0 --invalidation-mode unchecked-hash "$stdlib"

COPY --from=build /opt/venv /opt/venv

# HOME: the base image leaves it to the runtime, which gives a uid without a passwd entry "/"
# (and a pod may set another user's home). Libraries look things up there (libpq's and asyncpg's
# ~/.postgresql/postgresql.key, ~/.pgpass): a directory that does not exist answers every such
# look-up with "not found", never "permission denied".
ENV VIRTUAL_ENV=/opt/venv \
    PATH="/opt/venv/bin:$PATH" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/nonexistent \
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
