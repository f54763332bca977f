# One image for every infermesh service; docker-compose.yml picks the command.
# Installs what `make install models` does (the pinned pyproject.toml, code generated from
# protos/, the default models prepared), without the test tools, and runs as a user.

# Build stage: the compilers llama-cpp-python needs (it builds llama.cpp from source).
FROM python:3.11-slim AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
# torch: the CPU wheel by default (PyPI's own torch==2.13.0 is the multi-GB CUDA build).
# docker-compose.gpu.yml builds the inference image with this empty, for the CUDA build.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PATH=/opt/venv/bin:$PATH PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /srv/infermesh
RUN python -m venv /opt/venv

# Dependencies first, from pyproject.toml's pins, so a code change does not rebuild them.
COPY pyproject.toml ./
RUN --mount=type=cache,target=/root/.cache/pip \
    python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} -r /tmp/requirements.txt

# Generated code (gen/, build/infermesh.binpb), then the project itself, editable as
# `make install` has it: Envoy's templates and the descriptor set are read from the tree.
COPY scripts scripts
COPY protos protos
COPY third_party third_party
RUN python scripts/gen_protos.py
COPY README.md ./
COPY services services
COPY gateway gateway
COPY launcher launcher
COPY envoy envoy
RUN pip install --no-deps -e .

# The default models' weights, prepared once (Gemma converted from GGUF, about a minute).
ENV HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE DATA_DIR=/srv/infermesh/.data
RUN python -m services.inference.prepare

FROM python:3.11-slim
# libgomp: the OpenMP runtime llama.cpp was built against.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /srv/infermesh --no-create-home infermesh
COPY --from=build /opt/venv /opt/venv
# Owned by the user: DATA_DIR (models converted on demand, imported artifacts) is written
# at run time, and a named volume mounted there starts as a copy of it, owner included.
COPY --from=build --chown=infermesh:infermesh /srv/infermesh /srv/infermesh
ENV PATH=/opt/venv/bin:$PATH HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE DATA_DIR=/srv/infermesh/.data \
    PYTHONUNBUFFERED=1
WORKDIR /srv/infermesh
USER infermesh
