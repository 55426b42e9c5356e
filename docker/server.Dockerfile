# syntax=docker/dockerfile:1
# The study service and the Optuna dashboard: `hpsearch serve`. No torch in this image.
#   docker build -f docker/server.Dockerfile -t hpsearch-server .
FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Only what the server needs: worker/ is left out, so `worker*` finds nothing to package.
COPY pyproject.toml README.md ./
COPY service/ service/
COPY cli/ cli/
RUN python -m venv /opt/hpsearch \
 && /opt/hpsearch/bin/pip install ".[server,s3]" \
 && if /opt/hpsearch/bin/pip show torch >/dev/null 2>&1; then echo "torch must not be in the server image" >&2; exit 1; fi

FROM python:3.11-slim-bookworm
ENV PATH=/opt/hpsearch/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HPSEARCH_DATA_DIR=/var/lib/hpsearch \
    HPSEARCH_SEARCH_SPACES_DIR=/app/search_spaces
RUN groupadd --system --gid 1000 hpsearch \
 && useradd --system --uid 1000 --gid hpsearch --home-dir /var/lib/hpsearch --no-create-home hpsearch \
 && mkdir -p /var/lib/hpsearch/artifacts \
 && chown -R hpsearch:hpsearch /var/lib/hpsearch
COPY --from=build /opt/hpsearch /opt/hpsearch
COPY search_spaces/ /app/search_spaces/
WORKDIR /var/lib/hpsearch
USER hpsearch
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
CMD ["hpsearch", "serve", "--host", "0.0.0.0", "--port", "8000"]
