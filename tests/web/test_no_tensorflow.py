"""The web tier must stay light: it never imports TensorFlow, not even while serving."""

from __future__ import annotations

import subprocess
import sys

from shared.config import REPO_ROOT

PROBE = """
import sys
from shared.config import Settings
from web import create_app
app = create_app(Settings(redis_url="redis://127.0.0.1:1/0", database_url="sqlite://"))
client = app.test_client()
client.get("/")
client.get("/healthz")
client.post("/predict", data={"file": (__import__("io").BytesIO(b"GIF89a"), "x.gif")},
            content_type="multipart/form-data")
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {"tensorflow", "keras", "worker"})
print(",".join(heavy))
"""


def test_web_never_imports_tensorflow():
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""
