"""Celery worker side: model training, loading and digit prediction."""
