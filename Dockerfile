# syntax=docker/dockerfile:1
# ptnp_gpu for GPU workstations: CUDA runtime, CuPy (the "gpu" extra) and Dask (the "batch" extra).
#
#   docker build -t ptnp_gpu .
#   docker run --rm --gpus all ptnp_gpu                      # ptnp demo on the GPU
#   docker run --rm --gpus all --user "$(id -u):$(id -g)" -v "$PWD:/data" ptnp_gpu \
#       ptnp batch maps/ --out results/                      # a Dask worker per core, sharing the GPU
#
# Needs the NVIDIA driver and the NVIDIA Container Toolkit on the host (for --gpus).
# CUDA_VERSION must not be newer than what the host driver supports (nvidia-smi shows it).
ARG CUDA_VERSION=12.6.3
FROM nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/ptnp \
    PATH=/opt/ptnp/bin:$PATH \
    MPLBACKEND=Agg \
    MPLCONFIGDIR=/tmp/matplotlib \
    NUMBA_CACHE_DIR=/tmp/numba-cache \
    CUPY_CACHE_DIR=/cache/cupy

# python3 (3.12 on Ubuntu 24.04) in a venv; tini reaps the Dask worker processes
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv tini \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/ptnp

WORKDIR /opt/ptnp-src
COPY pyproject.toml README.md ./
COPY ptnp_gpu ./ptnp_gpu
COPY kernels ./kernels
# "gpu" brings CuPy (its CUDA 12 wheel uses this image's runtime libraries and NVRTC),
# "batch" brings Dask, pandas and pyarrow; tqdm draws the batch progress bar.
RUN pip install --upgrade pip \
 && pip install ".[gpu,batch]" tqdm \
 && python -c "import ptnp_gpu, cupy, distributed, pandas, pyarrow; print('ptnp_gpu', ptnp_gpu.__version__)" \
 && ptnp --help > /dev/null

# results are written to the working folder; mount yours at /data (writable by any --user)
# CuPy compiles its kernels on the first run (~2 min on an H200's host) into CUPY_CACHE_DIR:
# mount a volume there (-v ptnp_kernels:/cache) to pay that once, not once per container
RUN mkdir -p /data /cache/cupy && chmod 1777 /data /cache /cache/cupy
WORKDIR /data
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["ptnp", "demo"]
