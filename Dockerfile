# syntax=docker/dockerfile:1
# The worker container of flamingo-corpus builds on a cluster: Dataflow's sdk_container_image,
# and the SDK harness of Spark and Flink through Beam's portable runner (DOCKER environment, or a
# worker pool started with --worker_pool for the EXTERNAL one). See manifests/runners/ and the
# docs/scale.md ("Dataflow").
#
#   docker build -t REGION-docker.pkg.dev/PROJECT/flamingo-corpus/worker:0.1.0 .
#   docker push REGION-docker.pkg.dev/PROJECT/flamingo-corpus/worker:0.1.0
#
# What it holds: a CUDA runtime base, Python, the project installed with `pip install .` (so torch,
# torchvision, apache-beam and every other version come from setup.cfg's pins, the one place they
# are written), and the Beam SDK harness boot program from the official SDK image of the same
# Beam version, as the container's entrypoint. Workers install nothing at start-up.
#
# BEAM_VERSION must equal setup.cfg's apache-beam pin (tests/test_runners.py checks it): the boot
# program and the SDK it starts must be the same release. PYTHON_VERSION must be the Python of
# CUDA_IMAGE (Ubuntu 24.04: 3.12) and the Python minor version the pipeline is launched from.
ARG BEAM_VERSION=2.77.0
ARG PYTHON_VERSION=3.12
# The base matters for the NVIDIA container runtime (its environment makes Dataflow and Docker
# mount the host's driver into the container); the CUDA libraries torch runs on come with the
# torch wheel itself. CUDA 13 needs a 580+ driver on the host (Dataflow's install-nvidia-driver
# installs a current one); for older drivers pick a 12.x base and torch build.
ARG CUDA_IMAGE=nvidia/cuda:13.0.2-runtime-ubuntu24.04

FROM apache/beam_python${PYTHON_VERSION}_sdk:${BEAM_VERSION} AS beam_sdk

FROM ${CUDA_IMAGE}
ARG PYTHON_VERSION
# Extras of setup.cfg: gcp (Dataflow, gs://), aws (s3://), hadoop (hdfs://).
ARG EXTRAS=gcp,aws,hadoop
# Optional: CLIP weights fetched at build time into the image, so that workers (which may have no
# route to the model hub) load them from disk, e.g.
#   --build-arg PREFETCH_CLIP="ViT-B-32:laion2b_s34b_b79k ViT-L-14:openai"
ARG PREFETCH_CLIP=""

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends python${PYTHON_VERSION} python${PYTHON_VERSION}-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python${PYTHON_VERSION} -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    HF_HOME=/opt/hf-cache \
    FLAMINGO_CORPUS_CACHE=/opt/flamingo-corpus-cache
# The boot program would otherwise make a fresh virtual environment at every worker start and
# install the staged packages into it; everything is installed here already, so it runs the SDK
# in this environment (the venv above, first on PATH).
ENV RUN_PYTHON_SDK_IN_DEFAULT_ENVIRONMENT=1

WORKDIR /opt/flamingo-corpus
COPY setup.cfg pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY filters ./filters
# `pip install .` resolves torch, torchvision, apache-beam and the rest from setup.cfg; no version
# is repeated here.
RUN pip install --upgrade pip \
    && pip install ".[${EXTRAS}]" \
    && python -c "import apache_beam, torch, torchvision, open_clip, flamingo_corpus.laion.pipeline; print('beam', apache_beam.__version__, 'torch', torch.__version__)"
RUN for spec in ${PREFETCH_CLIP}; do \
        python -c "import sys, open_clip; m, p = sys.argv[1].split(':', 1); open_clip.create_model(m, pretrained=p)" "$spec" \
        || exit 1; \
    done

# The SDK harness boot program of the same Beam release: it starts the SDK worker when Dataflow,
# Spark or Flink run the container.
COPY --from=beam_sdk /opt/apache/beam /opt/apache/beam
ENTRYPOINT ["/opt/apache/beam/boot"]
