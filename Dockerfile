# syntax=docker/dockerfile:1
# hubsync: one image for the four services and the CLI.
#
#   docker build -t hubsync .
#   docker run hubsync python -m hubsync.auth      # or hubsync.ingress | hubsync.mapper | hubsync.writer
#   docker run hubsync hubsync status              # the operator CLI
#
# The Helm chart sets `command: ["python", "-m", "hubsync.<service>"]` per component. Generated
# gRPC code is committed, so the build runs no code generator.
#
# Supply chain: every dependency comes from requirements/runtime.lock (exact versions, sha256
# hashes; pip refuses anything else), the wheel is built with the backend pinned in
# requirements/build.lock, and the base image is pinned by digest. Refresh the locks with
# scripts/lock.sh; refresh the digest from docker-library/repo-info
# (repos/python/remote/3.11-slim.md, "python:3.11-slim" index digest) or
# `docker buildx imagetools inspect python:3.11-slim`, and keep the tag in front of it readable.

# python:3.11-slim (Debian trixie, Python 3.11.15), multi-platform index digest.
ARG PYTHON_IMAGE=python:3.11-slim@sha256:90744cff8f32887f075c47d747a173ff333e9e98801667af93c357fa9f5e28ff

# --- build: install the locked dependencies and hubsync into a virtualenv ------------------------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/hubsync && python -m venv /opt/build
WORKDIR /src
# Dependencies change less often than code: a layer of their own, from the lock only.
COPY requirements/ requirements/
RUN /opt/hubsync/bin/pip install --require-hashes --no-deps -r requirements/runtime.lock \
    && /opt/build/bin/pip install --require-hashes --no-deps -r requirements/build.lock
COPY pyproject.toml README.md ./
COPY libs/ libs/
COPY services/ services/
# The wheel holds the runtime only: the local suite (`hubsync run`, the sandbox, a local Redis)
# is development tooling, left out by pyproject.toml's wheel target.
# The wheel is built with the locked backend (no build isolation: nothing unpinned is fetched)
# and installed without dependencies: they are all in the lock already.
RUN /opt/build/bin/pip wheel --no-build-isolation --no-deps --wheel-dir /wheels . \
    && /opt/hubsync/bin/pip install --no-deps /wheels/hubsync-*.whl \
    && /opt/hubsync/bin/pip check \
    # Bytecode now: the runtime root filesystem is read-only.
    && /opt/hubsync/bin/python -m compileall -q /opt/hubsync/lib \
    # No installer in the runtime virtualenv.
    && /opt/hubsync/bin/pip uninstall -y pip setuptools wheel

# --- runtime: the virtualenv only, as an unprivileged user ----------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="hubsync" \
      org.opencontainers.image.description="Middleware between HubSpot and your own systems" \
      org.opencontainers.image.source="https://github.com/hubsync/hubsync" \
      org.opencontainers.image.licenses="Apache-2.0"

# A fixed numeric uid/gid so Kubernetes' runAsNonRoot can verify it without /etc/passwd.
RUN groupadd --system --gid 10001 hubsync \
    && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
       --shell /usr/sbin/nologin hubsync

COPY --from=build /opt/hubsync /opt/hubsync

ENV PATH="/opt/hubsync/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HUBSYNC_GRPC_HOST=0.0.0.0 \
    HUBSYNC_GRPC_PORT=50051 \
    HUBSYNC_METRICS_PORT=9464 \
    HUBSYNC_GRPC_HEALTH_PORT=50050 \
    HUBSYNC_INGRESS_HTTP_PORT=8080
# Secure by default: production refuses missing or short caller tokens, the insecure opt-in and
# reflection (unless enabled); `-e HUBSYNC_ENVIRONMENT=development` for local experiments.
ENV HUBSYNC_ENVIRONMENT=production

# gRPC (every service), Prometheus /metrics, plaintext health for probes, ingress HTTP.
EXPOSE 50051 9464 50050 8080

WORKDIR /tmp
USER 10001:10001

# Entry points: `python -m hubsync.auth`, `python -m hubsync.ingress`, `python -m hubsync.mapper`,
# `python -m hubsync.writer`, and the `hubsync` CLI. Without arguments the image prints the CLI's help.
CMD ["hubsync", "--help"]
