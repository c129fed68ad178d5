# fleetlm on NVIDIA GPUs: CUDA runtime + torch + fleetlm, run as a non-root user.
#   docker build -t ghcr.io/fleetlm/fleetlm:0.1.0 .
#   docker run --gpus all -p 8000:8000 -p 8080:8080 ghcr.io/fleetlm/fleetlm:0.1.0 serve
# The same image runs Ray nodes for `ray up` (deploy/ray-up/) and KubeRay (helm/fleetlm/).
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
FROM ${CUDA_IMAGE}

ARG TORCH_VERSION=2.11.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
ARG USER_UID=1000

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/fleetlm \
    PATH=/opt/fleetlm/bin:$PATH

# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv openssh-client rsync \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/fleetlm \
    && (id -u ubuntu >/dev/null 2>&1 && userdel -r ubuntu || true) \
    && useradd --create-home --uid ${USER_UID} --shell /bin/bash ray

# torch first, from its CUDA index (its own layer: it is most of the image and changes least).
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"

WORKDIR /opt/fleetlm-src
COPY pyproject.toml README.md ./
COPY actors ./actors
COPY kernels ./kernels
COPY orchestrator ./orchestrator
COPY policies ./policies
COPY protos ./protos
COPY bench ./bench
RUN pip install ".[gpu]"

USER ray
WORKDIR /home/ray
EXPOSE 8000 8080 50051
ENTRYPOINT ["fleetlm"]
CMD ["serve"]
