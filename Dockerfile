# One source tree, two images:
#   docker build --target api    -t textclf:api .     # Flask + Granian + onnxruntime; never torch
#   docker build --target worker -t textclf:worker .  # adds torch (CUDA build from PyPI) for Celery training
# compose.yaml builds both and also runs the one-shot `textclf migrate` from the api image.

FROM python:3.11-slim-bookworm AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    TEXTCLF_DATA_DIR=/var/lib/textclf \
    ARTIFACT_DIR=/var/lib/textclf/artifacts

# A fixed, non-root uid so the named artifact volume has the same owner in every container; USER names
# it numerically below so a runtime (runAsNonRoot) can check it without reading /etc/passwd.
# --no-log-init: a high uid otherwise bloats /var/log/lastlog and faillog in the image.
# The data directory is created here, owned by that user, because Docker copies the image's
# ownership into an empty named volume on first mount; otherwise the volume would be root-owned.
RUN groupadd --system --gid 10001 textclf \
    && useradd --system --no-log-init --uid 10001 --gid textclf --create-home textclf \
    && mkdir -p /var/lib/textclf/artifacts \
    && chown -R textclf:textclf /var/lib/textclf

WORKDIR /app

COPY pyproject.toml README.md alembic.ini ./
COPY core/ core/
COPY app/ app/
COPY worker/ worker/
COPY migrations/ migrations/

# Only the API's dependencies: onnxruntime, tokenizers, Flask, SQLAlchemy, Celery client... no torch.
# Editable so that alembic.ini and migrations/ stay next to the package, where `textclf migrate` finds them.
RUN pip install --no-cache-dir -e .


FROM base AS worker

# torch first, pinned, from PyPI's default index: on linux/x86_64 that is the CUDA build (it pulls the
# nvidia-* runtime wheels, so the image needs no CUDA base; the host needs only the driver and the
# NVIDIA container toolkit). The `worker` extra then adds onnx, onnxscript and scikit-learn around it.
ARG TORCH_VERSION=2.13.0
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}" \
    && pip install --no-cache-dir -e '.[worker]'

USER 10001:10001

# One training job per GPU, in a fresh process per job so its GPU memory goes back to the driver.
# Celery warm-shuts-down on SIGTERM; compose gives it stop_grace_period to checkpoint.
CMD ["celery", "-A", "worker.celery_app", "worker", "--loglevel", "INFO", "--concurrency", "1", "--max-tasks-per-child", "1"]


FROM base AS api

USER 10001:10001

EXPOSE 8000

# slim has no curl: ask Python. urlopen raises on connection errors and on any non-2xx status.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

# Granian with API_WORKERS processes; each makes its own onnxruntime sessions after it starts.
CMD ["textclf", "api", "--host", "0.0.0.0", "--port", "8000"]
