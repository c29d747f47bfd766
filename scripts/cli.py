"""Command-line client: `python -m scripts.cli predict FILE... [--url URL]` prints each file's digit.

It goes through the same queue as the page: one upload per 16 files, then a long poll until every answer
is final. Exit status 0 when every file was read, 1 when any was refused or failed, 2 on a service error.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.load import multipart
from shared.config import ClientSettings

log = logging.getLogger("digits")
PER_REQUEST = 16  # the service's default MAX_FILES_PER_REQUEST


def _call(url: str, body: bytes | None = None, content_type: str | None = None,
          timeout: float = 60) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    if content_type:
        request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:  # 4xx/5xx still carry the API's JSON error
        try:
            return exc.code, json.loads(exc.read())
        except ValueError:
            return exc.code, {"error": {"code": "http_error", "message": str(exc)}}


def predict(base_url: str, paths: Sequence[Path], wait: float = 10) -> list[tuple[Path, dict[str, Any]]]:
    """Upload the files and wait for their answers; (path, status document or error) in order."""
    results: list[tuple[Path, dict[str, Any]]] = []
    for start in range(0, len(paths), PER_REQUEST):
        chunk = list(paths[start:start + PER_REQUEST])
        body, ctype = multipart([(p.name, p.read_bytes()) for p in chunk])
        status, answer = _call(f"{base_url}/predict", body, ctype)
        if status != 202:
            results += [(p, answer) for p in chunk]
            continue
        status_url = answer["status_url"]
        while True:
            asked = time.monotonic()
            status, docs = _call(f"{base_url}{status_url}{'&' if '?' in status_url else '?'}wait={wait}")
            if status != 200:
                results += [(p, docs) for p in chunk]
                break
            docs_list = docs.get("tasks", [docs])
            if all(d["state"] in ("SUCCESS", "FAILURE") for d in docs_list):
                results += list(zip(chunk, docs_list, strict=True))
                break
            if time.monotonic() - asked < 1:  # the server could not hold the request: do not spin
                time.sleep(1)
    return results


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, predict, print one line per file."""
    parser = argparse.ArgumentParser(prog="python -m scripts.cli", description="Read handwritten digits.")
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("predict", help="upload images and print their digits")
    cmd.add_argument("files", nargs="+", type=Path)
    cmd.add_argument("--url", default=ClientSettings().url, help="the service (default: $DIGITS_URL or :8000)")
    cmd.add_argument("--json", action="store_true", help="print the status documents as JSON lines")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    missing = [p for p in args.files if not p.is_file()]
    if missing:
        log.error("no such file: %s", ", ".join(map(str, missing)))
        return 2
    try:
        results = predict(args.url.rstrip("/"), args.files)
    except (urllib.error.URLError, OSError) as exc:
        log.error("cannot reach %s: %s", args.url, exc)
        return 2
    ok = True
    for path, doc in results:
        if args.json:
            sys.stdout.write(json.dumps({"file": str(path), **doc}) + "\n")
        elif doc.get("state") == "SUCCESS":
            sys.stdout.write(f"{path}: {doc['digit']} ({doc['confidence']:.1%})\n")
        else:
            message = doc.get("error") or "unknown error"
            if isinstance(message, dict):
                message = message.get("message", message)
            sys.stdout.write(f"{path}: error: {message}\n")
        ok = ok and doc.get("state") == "SUCCESS"
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
