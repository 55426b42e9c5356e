# syntax=docker/dockerfile:1
# A GPU worker: `hpsearch worker`, on the official PyTorch CUDA runtime image. The image's own
# torch and torchvision are kept: pip is constrained to the installed versions, so it adds only
# the worker's small pure-Python dependencies and never downloads another torch.
#   docker build -f docker/worker.Dockerfile -t hpsearch-worker .
#   docker run --gpus all -e HPSEARCH_SERVER=http://HOST:8000 -e HPSEARCH_TOKEN=... hpsearch-worker

FROM pytorch/pytorch:2.7.1-cuda12.8-cudnn9-runtime
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 \
    CUDA_DEVICE_ORDER=PCI_BUS_ID
WORKDIR /src
# Only what the worker needs: service/ is left out (the worker never imports it).
COPY pyproject.toml README.md ./
COPY worker/ worker/
COPY cli/ cli/
# The installed versions as pip sees them (package metadata; torch.__version__ may differ).
ARG PINNED="from importlib.metadata import version; [print(f'{d}=={version(d)}') for d in ('torch', 'torchvision')]"
RUN python -c "import sys; assert sys.version_info >= (3, 11), sys.version" \
 && python -c "$PINNED" > /tmp/keep-torch.txt \
 && python -m pip install --constraint /tmp/keep-torch.txt ".[worker]" \
 && python -c "$PINNED" | diff /tmp/keep-torch.txt - \
 && cd / && python -c "import worker.supervisor, sklearn, tqdm" \
 && rm -rf /src

# cuda:N is the GPU that nvidia-smi lists as N (CUDA_DEVICE_ORDER above), so `--gpus 1,3` means
# what it says. Pretrained weights land in $TORCH_HOME/hub/checkpoints: mount a volume there so
# they are downloaded once.
ENV TORCH_HOME=/cache/torch
RUN useradd --create-home --user-group hpsearch \
 && mkdir -p /cache/torch/hub/checkpoints /data \
 && chown -R hpsearch:hpsearch /cache
WORKDIR /home/hpsearch
USER hpsearch
ENTRYPOINT ["hpsearch"]
# The server and token come from HPSEARCH_SERVER and HPSEARCH_TOKEN; one process per visible GPU.
CMD ["worker", "--gpus", "all"]
