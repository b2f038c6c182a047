# mpcl on a CUDA PyTorch base: the system libraries FFCV builds against, mpcl installed
# editable in /app by the Makefile's own steps (`make system-packages`, `make venv`), run
# as a non-root user, with the datasets and the run directories as volumes.
#   make image                              # docker build -t $(IMAGE) .   (IMAGE: see Makefile)
#   docker run --gpus all -v $PWD/data:/app/data -v $PWD/runs:/app/runs ghcr.io/your-org/mpcl:ray-2.60.0 \
#     python run.py sweep sweeps/cifar10_simclr_attn.yaml
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

# The virtual environment sees the base image's torch (no second 2 GB copy); mpcl editable.
COPY . .
RUN make venv VENV=/opt/mpcl-venv VENV_FLAGS=--system-site-packages EXTRAS= PYTHON=python3 \
    && python -c "import ffcv, mpcl, ray; print('ray', ray.__version__)"

RUN useradd --create-home --uid 1000 --shell /bin/bash mpcl \
    && mkdir -p /app/data /app/runs \
    && chown -R mpcl:mpcl /app/data /app/runs
USER 1000:1000
VOLUME ["/app/data", "/app/runs"]

CMD ["python", "run.py", "--help"]
