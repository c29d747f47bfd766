# digits-web: the Flask/gunicorn web tier, the database migrations and Flower. No TensorFlow in this image.
#
#   docker build -f docker/web.Dockerfile -t digits-web .
#   docker build -f docker/web.Dockerfile --build-arg BASE_IMAGE=local/python:3.11-bookworm -t digits-web .
#
# Commands (same image):  default CMD = gunicorn on :80
#   python -m shared.migrate                                   apply the migrations (one-shot)
#   celery -A worker.celery_app flower --port=5555             Flower; basic auth from FLOWER_BASIC_AUTH=user:pw
#
# BASE_IMAGE: any Debian bookworm image with Python 3.11 and its venv module, e.g. the official
# python:3.11-slim-bookworm, or the registry-free one that scripts/make-base-image.sh builds.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

# A venv works the same on both bases (Debian's own python3 is "externally managed", PEP 668).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# No system packages: the manylinux wheels (Pillow, numpy, cryptography, ...) bundle their native libraries.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --create-home --home-dir /home/app --shell /usr/sbin/nologin app

WORKDIR /app

# Requirements first: a code change reuses this layer.
# requirements/locks/web.txt: web.txt and flower.txt compiled with every dependency pinned by hash (make lock).
COPY requirements/locks/web.txt requirements/locks/
RUN python3 -m venv /opt/venv \
    && pip install --no-cache-dir --require-hashes -r requirements/locks/web.txt \
    && python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('tensorflow') is not None)"

# The code stays owned by root: the app user can read it, not change it. worker/ is here for Flower's
# `-A worker.celery_app` (it imports no TensorFlow at import time).
COPY alembic.ini ./
COPY migrations/ migrations/
COPY templates/ templates/
COPY shared/ shared/
COPY web/ web/
COPY gunicorn_conf.py ./
COPY worker/ worker/

USER 10001:10001
EXPOSE 80
# Docker >= 20.10 lets unprivileged processes bind low ports inside a container's own network namespace
# (net.ipv4.ip_unprivileged_port_start=0), so the app user can listen on 80.
# gunicorn_conf.py: gevent workers, and the metrics folder's life cycle (PROMETHEUS_MULTIPROC_DIR is set
# where the web runs).
CMD ["gunicorn", "-c", "python:gunicorn_conf", "--bind", "0.0.0.0:80", "--workers", "2", \
     "--access-logfile", "-", "web:create_app()"]
