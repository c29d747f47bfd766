"""Command-line client: `python -m scripts.cli predict FILE... [--url URL]` prints each file's digit.

It goes through the same queue as the page: one upload per 16 files in one-request mode
(`POST /predict?wait=`), which answers with the digits; should they take longer, it long-polls until
every answer is final. Exit status 0 when every file was read, 1 when any was refused or failed, 2 on a
service error.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import requests

from shared.config import ClientSettings

log = logging.getLogger("digits")
PER_REQUEST = 16  # the service's default MAX_FILES_PER_REQUEST
FINAL = ("SUCCESS", "FAILURE")


def _json(response: requests.Response) -> dict[str, Any]:
    """The API's JSON answer (4xx/5xx carry its error document too)."""
    try:
        body = response.json()
    except ValueError:
        return {"error": {"code": "http_error", "message": f"{response.status_code} {response.reason}"}}
    return body if isinstance(body, dict) else {"error": {"code": "http_error", "message": str(body)}}


def _await_final(http: requests.Session, base_url: str, status_url: str, wait: float) -> tuple[int, dict[str, Any]]:
    """Long-poll a status URL until every document is final; the last status and answer."""
    while True:
        asked = time.monotonic()
        response = http.get(f"{base_url}{status_url}", params={"wait": wait}, timeout=wait + 30)
        answer = _json(response)
        if response.status_code != 200 or all(d["state"] in FINAL for d in answer.get("tasks", [answer])):
            return response.status_code, answer
        if time.monotonic() - asked < 1:  # the server could not hold the request: do not spin
            time.sleep(1)


def predict(base_url: str, paths: Sequence[Path], wait: float = 10) -> list[tuple[Path, dict[str, Any]]]:
    """Upload the files and wait for their answers; (path, status document or error) in order."""
    results: list[tuple[Path, dict[str, Any]]] = []
    with requests.Session() as http:
        for start in range(0, len(paths), PER_REQUEST):
            chunk = list(paths[start:start + PER_REQUEST])
            files = [("file", (p.name, p.read_bytes())) for p in chunk]
            response = http.post(f"{base_url}/predict", params={"wait": wait}, files=files, timeout=wait + 60)
            status, answer = response.status_code, _json(response)
            if status == 202:  # not final within the wait: follow its status URL
                status, answer = _await_final(http, base_url, answer["status_url"], wait)
            if status != 200:
                results += [(p, answer) for p in chunk]
                continue
            results += list(zip(chunk, answer.get("tasks", [answer]), strict=True))
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
    except (requests.RequestException, OSError) as exc:
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
