# Stride images, one target per ONNX Runtime build (the two packages install the same module: never both):
#
#   docker build --target cpu -t stride:cpu .    # python:3.11-slim, onnxruntime
#   docker build --target gpu -t stride:gpu .    # NVIDIA CUDA 13.0 + cuDNN 9 runtime, onnxruntime-gpu
#
# Each installs the project with `pip install -c constraints/<variant>.txt '.[<variant>]'`: every runtime
# package pinned, and the same command tests/deploy runs. The CUDA/cuDNN pairing and how it was checked
# are in docs/deployment.md. Both images bake in models/ (STRIDE_MODELS_DIR=/app/models); mount a
# directory over /app/models to serve others.

ARG PYTHON_IMAGE=python:3.11-slim-trixie
# onnxruntime-gpu 1.31.1 is built with CUDA 13.0 and cuDNN 9: keep the CUDA major and cuDNN 9 together.
ARG CUDA_IMAGE=nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04

# ---------------------------------------------------------------------------------------------------- cpu
FROM ${PYTHON_IMAGE} AS cpu-build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/stride
ENV PATH=/opt/stride/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY constraints/ constraints/
COPY service/ service/
RUN pip install --no-cache-dir -c constraints/cpu.txt '.[cpu]'

FROM ${PYTHON_IMAGE} AS cpu
RUN groupadd --system --gid 10001 stride \
    && useradd --system --uid 10001 --gid 10001 --home-dir /app --no-create-home --shell /usr/sbin/nologin stride \
    && mkdir -p /app/collections && chown 10001:10001 /app/collections
COPY --from=cpu-build /opt/stride /opt/stride
COPY LICENSE /app/LICENSE
COPY models/ /app/models/
ENV PATH=/opt/stride/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    STRIDE_HOST=0.0.0.0 \
    STRIDE_PORT=8000 \
    STRIDE_GRPC_PORT=8001 \
    STRIDE_MODELS_DIR=/app/models \
    STRIDE_PROVIDERS=CPUExecutionProvider
WORKDIR /app
USER 10001:10001
# HTTP (/v1, /v2, /health, /metrics) and the Open Inference Protocol's gRPC service
EXPOSE 8000 8001
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/health/ready' % os.environ.get('STRIDE_PORT', '8000'), timeout=2)"]
STOPSIGNAL SIGTERM
CMD ["python", "-m", "service"]

# ---------------------------------------------------------------------------------------------------- gpu
FROM ${CUDA_IMAGE} AS gpu-base
# Ubuntu 24.04's CPython 3.12; versions follow the base image's security updates, so they are not pinned.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/*

FROM gpu-base AS gpu-build
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-venv \
    && rm -rf /var/lib/apt/lists/*
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python3 -m venv /opt/stride
ENV PATH=/opt/stride/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY constraints/ constraints/
COPY service/ service/
RUN pip install --no-cache-dir -c constraints/gpu.txt '.[gpu]'

FROM gpu-base AS gpu
RUN groupadd --system --gid 10001 stride \
    && useradd --system --uid 10001 --gid 10001 --home-dir /app --no-create-home --shell /usr/sbin/nologin stride \
    && mkdir -p /app/collections && chown 10001:10001 /app/collections
COPY --from=gpu-build /opt/stride /opt/stride
COPY LICENSE /app/LICENSE
COPY models/ /app/models/
ENV PATH=/opt/stride/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    STRIDE_HOST=0.0.0.0 \
    STRIDE_PORT=8000 \
    STRIDE_GRPC_PORT=8001 \
    STRIDE_MODELS_DIR=/app/models \
    STRIDE_PROVIDERS=CUDAExecutionProvider,CPUExecutionProvider
WORKDIR /app
USER 10001:10001
# HTTP (/v1, /v2, /health, /metrics) and the Open Inference Protocol's gRPC service
EXPOSE 8000 8001
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/health/ready' % os.environ.get('STRIDE_PORT', '8000'), timeout=2)"]
STOPSIGNAL SIGTERM
CMD ["python", "-m", "service"]

# `docker build .` without --target builds the last stage: the cpu image, which runs anywhere.
FROM cpu AS default
