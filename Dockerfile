# P²SAM segmentation service: one image for the API (`p2sam serve`) and the GPU workers
# (`p2sam worker`). Build: docker build -t p2sam-service .   Run: docker compose up (see deploy/README.md)
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    P2SAM_DATA_DIR=/data \
    P2SAM_HOST=0.0.0.0 \
    P2SAM_PORT=8000

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv curl ca-certificates \
    && rm -rf /var/lib/apt/lists/*

RUN python3 -m venv /opt/venv \
    && pip install --no-cache-dir "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}" --index-url "${TORCH_INDEX_URL}"

WORKDIR /app
COPY pyproject.toml README.md ./
COPY models ./models
COPY imaging ./imaging
COPY p2sam ./p2sam
COPY service ./service
COPY worker ./worker
COPY bench ./bench
COPY dicomnet ./dicomnet
# Bundled weights (models/weights/*.pt) are baked in as package data; more can be mounted at
# P2SAM_MODELS_DIR (e.g. /models) without rebuilding.
RUN pip install --no-cache-dir . \
    && groupadd --system --gid 10001 p2sam \
    && useradd --system --uid 10001 --gid p2sam --home-dir /app --shell /usr/sbin/nologin p2sam \
    && mkdir -p /data /models \
    && chown p2sam:p2sam /data /models

USER 10001:10001
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:8000/healthz"]
CMD ["p2sam", "serve"]
