# redis-batcher: one image for the coordinator, the workers and producers.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Metadata first, so the dependency layer is cached until pyproject.toml changes.
COPY pyproject.toml README.md ./
COPY batcher ./batcher
COPY workers ./workers
# the core, plus the applications docker-compose.yml runs from this image (a feed fetcher, the
# Prometheus exporter); add llm for BATCH_HANDLER=batcher.llm.handler:summarize, or dashboard
ARG EXTRAS=feeds,exporter
RUN pip install ".[${EXTRAS}]"

# Workers run user handlers: never as root.
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin batcher
USER batcher
WORKDIR /home/batcher

CMD ["batcher", "--help"]
