# mpcl on a CUDA PyTorch base: the system libraries FFCV builds against, then mpcl's wheel
# installed by the Makefile's own steps (`make system-packages`, `make install-wheel`), run as
# a non-root user in /app, with the datasets and the run directories as volumes. The image
# holds no checkout: presets and sweep files are named without a path.
#   make image                              # docker build -t $(IMAGE) .   (IMAGE: see Makefile)
#   docker run --gpus all -v $PWD/data:/app/data -v $PWD/runs:/app/runs ghcr.io/your-org/mpcl:ray-2.60.0 \
#     mpcl sweep cifar10_simclr_attn
# The cluster manifests in sweeps/cluster/ name this image; its Ray is pyproject.toml's pin.
ARG BASE_IMAGE=pytorch/pytorch:2.8.0-cuda12.8-cudnn9-devel
FROM ${BASE_IMAGE}

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/mpcl-venv/bin:$PATH
WORKDIR /app

# make itself, then the Makefile's system packages (their layer survives source edits);
# wget: KubeRay's health probes.
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends make && rm -rf /var/lib/apt/lists/*
COPY Makefile ./
RUN make system-packages APT_EXTRA=wget && rm -rf /var/lib/apt/lists/*

# The virtual environment sees the base image's torch (no second 2 GB copy); mpcl from its
# wheel, built from a copy of the tree that is removed afterwards.
COPY . /tmp/mpcl-src
RUN make -C /tmp/mpcl-src install-wheel VENV=/opt/mpcl-venv VENV_FLAGS=--system-site-packages PYTHON=python3 \
        DIST=/tmp/mpcl-dist \
    && rm -rf /tmp/mpcl-src /tmp/mpcl-dist \
    && python -c "import ffcv, mpcl, ray; print('ray', ray.__version__)" && mpcl --help > /dev/null

RUN useradd --create-home --uid 1000 --shell /bin/bash mpcl \
    && mkdir -p /app/data /app/runs \
    && chown -R mpcl:mpcl /app/data /app/runs
USER 1000:1000
VOLUME ["/app/data", "/app/runs"]

CMD ["mpcl", "--help"]
