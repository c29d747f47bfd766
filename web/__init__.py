"""The HTTP tier: accepts uploads, records them, queues them, and reports their state. No TensorFlow here.

`web:create_app()` is what gunicorn serves (gunicorn_conf.py, outside this package, is its configuration).
"""

from web.app import create_app

__all__ = ["create_app"]
