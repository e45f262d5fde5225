# syntax=docker/dockerfile:1
# llava-batch: one image for the GPU worker, the sweeper, migrations and the CLI.
#
#   docker build -t llava-batch .                       # CUDA torch from PyPI (Linux x86_64)
#   docker build -t llava-batch \
#     --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .   # a chosen CUDA version
#   docker build -t llava-batch \
#     --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu .     # CPU only, as CI tests
#
# torch is pinned here, not in pyproject.toml. The version is the one CI tests (with the CPU
# wheel); the GPU worker needs a CUDA build of the same version, so pick the PyTorch index
# whose CUDA suits your host driver. The NVIDIA driver itself comes from the host through the
# NVIDIA Container Toolkit: the base image needs no CUDA.

FROM python:3.11-slim

ARG TORCH_SPEC="torch==2.13.0"
# Empty: PyPI (its Linux x86_64 torch wheel is a CUDA build).
ARG TORCH_INDEX=""

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LLAVA_BATCH_HOME=/data \
    HF_HOME=/hf-cache

# No C compiler: nothing JIT-compiles at run time. Constrained extraction (llguidance) computes
# its masks in Rust and applies them with plain torch operations, on CPU and CUDA alike.

# torch first, in its own layer: it is the large one and changes least often.
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install ${TORCH_INDEX:+--index-url "$TORCH_INDEX"} "$TORCH_SPEC"

WORKDIR /app
COPY . .
# The [gpu] extras: bitsandbytes (8/4-bit quantization) and accelerate. Repeating the torch
# pin keeps pip from swapping the build installed above.
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install ".[gpu]" "$TORCH_SPEC" \
    && python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

RUN useradd --create-home --uid 10001 --user-group llava \
    && mkdir -p /data /hf-cache /inputs \
    && chown llava:llava /data /hf-cache
USER llava
WORKDIR /home/llava

ENTRYPOINT ["llava-batch"]
CMD ["--help"]
