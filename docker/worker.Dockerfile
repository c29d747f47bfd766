# digits-worker: the Celery worker holding the model (its ONNX form on ONNX Runtime: no TensorFlow in this image);
# digits-trainer: the same with TensorFlow, for the training script; digits-worker:gpu: TensorFlow's CUDA build.
#
#   docker build -f docker/worker.Dockerfile -t digits-worker .
#   docker build -f docker/worker.Dockerfile --build-arg REQUIREMENTS=requirements/locks/training.txt -t digits-trainer .
#   docker build -f docker/worker.Dockerfile --build-arg REQUIREMENTS=requirements/locks/gpu.txt -t digits-worker:gpu .
#   docker build -f docker/worker.Dockerfile --build-arg BASE_IMAGE=local/python:3.11-bookworm -t digits-worker .
#
# Commands:  default CMD = the Celery worker
#   python -m worker.create_and_train_model --output /app/models/mnist_model.h5 [--data DIR]   train (digits-trainer)
#
# The worker loads MODEL_PATH (default /app/models/mnist_model.h5): mount the trained model's volume at /app/models.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

# requirements/locks/worker.txt (onnxruntime), training.txt (tensorflow-cpu) or gpu.txt (tensorflow[and-cuda]; CUDA
# comes from wheels): requirements/*.txt compiled with every dependency pinned by hash (make lock).
ARG REQUIREMENTS=requirements/locks/worker.txt

# A venv works the same on both bases (Debian's own python3 is "externally managed", PEP 668).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# No system packages: the manylinux wheels (TensorFlow, Pillow, h5py, scipy, ...) bundle their native libraries.
# A home the app user can write to: Keras keeps its config and downloaded datasets under ~/.keras.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --create-home --home-dir /home/app --shell /usr/sbin/nologin app

WORKDIR /app

# Requirements first: a code change never reinstalls them.
COPY requirements/locks/worker.txt requirements/locks/training.txt requirements/locks/gpu.txt requirements/locks/
RUN python3 -m venv /opt/venv \
    && pip install --no-cache-dir --require-hashes -r "${REQUIREMENTS}"

# Owned by the app user, so that a fresh named volume mounted here is writable by the trainer.
RUN install -d -o app -g app /app/models

# The code stays owned by root: the app user can read it, not change it.
COPY shared/ shared/
COPY worker/ worker/
# The trainer (compose's trainer service, the Kubernetes Job) runs from this Dockerfile too.
COPY training/ training/

USER 10001:10001
# Pool and concurrency come from the settings (WORKER_POOL, WORKER_CONCURRENCY); scale with replicas.
CMD ["celery", "-A", "worker.celery_app", "worker", "--loglevel=INFO"]
