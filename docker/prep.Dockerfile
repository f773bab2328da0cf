# The prep stage (xclr-prep, Ray). Same install steps as scripts/setup_env.sh.
#   docker build -f docker/prep.Dockerfile -t xclr-prep .
# The torch wheel pinned in pyproject.toml carries CUDA; the same image runs CPU and GPU Ray nodes.
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends wordnet-base tuxpaint-stamps-default \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/xclr
COPY . .
RUN pip install --no-cache-dir torch==2.14.1 torchvision==0.29.1 && pip install --no-cache-dir -e .
ENV HF_HUB_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0
ENTRYPOINT ["xclr-prep"]
