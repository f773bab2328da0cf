# The trainer (xclr-train under torchrun). Same install steps as scripts/setup_env.sh.
#   docker build -f docker/train.Dockerfile -t xclr-train .
FROM nvidia/cuda:13.0.0-cudnn-runtime-ubuntu24.04
RUN apt-get update && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/xclr
COPY . .
RUN python3.11 -m venv /opt/venv && /opt/venv/bin/pip install --no-cache-dir torch==2.14.1 torchvision==0.29.1 \
    && /opt/venv/bin/pip install --no-cache-dir -e .
ENV PATH=/opt/venv/bin:$PATH
ENTRYPOINT ["torchrun"]
