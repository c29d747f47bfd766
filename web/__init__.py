"""The HTTP tier: accepts uploads, records them, queues them, and reports their state. No TensorFlow here.

`create_app` lives in web/app.py and is imported only when called: gunicorn's master imports this package
for its config module (web/gunicorn_conf.py), and each gevent worker must patch the standard library
(sockets, ssl) before redis, kombu or PyMySQL are imported, which a forked worker would otherwise inherit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from celery import Celery
    from flask import Flask

    from shared.config import Settings


def create_app(settings: Settings | None = None, celery: Celery | None = None) -> Flask:
    """Application factory (web/app.py): dependencies are passed in (tests) or built from the environment."""
    from web.app import create_app as factory

    return factory(settings, celery)
