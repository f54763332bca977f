# One image for every infermesh service; the compose file picks the command.
# On a GPU host, pip's default torch wheel is the CUDA build, which is what the
# inference server wants there (DEVICE=cuda:0).
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends make git && rm -rf /var/lib/apt/lists/*
WORKDIR /srv/infermesh
COPY . .
RUN make install PYTHON=python3.11 && make models DATA_DIR=/srv/infermesh/.data
ENV PATH=/srv/infermesh/.venv/bin:$PATH HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE DATA_DIR=/srv/infermesh/.data
