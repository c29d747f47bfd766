"""Command-line client: `python -m scripts.cli predict FILE... [--url URL]` prints each file's digit.

It goes through the same queue as the page: one upload per 16 files in one-request mode
(`POST /predict?wait=`), which answers with the digits; should they take longer, it long-polls until
every answer is final. Each upload carries an Idempotency-Key, so one retried after a dropped connection is
never predicted twice. `--webhook URL` asks the service to POST each final answer there as well.
`cancel ID` and `delete ID` act on an upload made with the same `--owner-token`.
Exit status 0 when every file was read (or the task cancelled or deleted), 1 when any was refused or failed,
2 on a service error.
"""

from __future__ import annotations

import argparse
import json
import logging
import secrets
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import requests

from shared.config import ClientSettings

log = logging.getLogger("digits")
PER_REQUEST = 16  # the service's default MAX_FILES_PER_REQUEST
FINAL = ("SUCCESS", "FAILURE", "CANCELED")
RETRIES = 3  # tries after the first, when the connection drops or the key's first request is still recorded
RETRY_DELAY_S = 0.5  # doubled after each try


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


def _submit(http: requests.Session, url: str, files: list[tuple[str, tuple[str, bytes]]], data: dict[str, str],
            wait: float) -> requests.Response:
    """POST one chunk; a dropped connection or a key still being recorded is retried with the same key."""
    headers = {"Idempotency-Key": str(uuid.uuid4())}  # one per chunk, the same on every retry of it

    def post() -> requests.Response:
        return http.post(url, params={"wait": wait}, files=files, data=data, headers=headers, timeout=wait + 60)

    for attempt in range(RETRIES):
        try:
            response = post()
            if not _key_in_use(response):
                return response
        except (requests.ConnectionError, requests.Timeout) as exc:
            log.warning("no answer (%s); sending the same upload again", exc)
        time.sleep(RETRY_DELAY_S * 2 ** attempt)
    return post()  # the last try: its answer, or its error, is the user's


def _key_in_use(response: requests.Response) -> bool:
    """Whether the service is still recording the first request with this key (retry in a moment)."""
    return response.status_code == 409 and _json(response).get("error", {}).get("code") == "idempotency_key_in_use"


def predict(base_url: str, paths: Sequence[Path], wait: float = 10, owner_token: str | None = None,
            webhook: str | None = None, webhook_events: str | None = None) -> list[tuple[Path, dict[str, Any]]]:
    """Upload the files and wait for their answers; (path, status document or error) in order."""
    results: list[tuple[Path, dict[str, Any]]] = []
    data = {k: v for k, v in (("webhook", webhook), ("webhook_events", webhook_events)) if v}
    with requests.Session() as http:
        # Idempotency-Keys belong to an owner token: without one of the user's, one for this run.
        http.headers["X-Owner-Token"] = owner_token or secrets.token_urlsafe(24)
        for start in range(0, len(paths), PER_REQUEST):
            chunk = list(paths[start:start + PER_REQUEST])
            files = [("file", (p.name, p.read_bytes())) for p in chunk]
            response = _submit(http, f"{base_url}/predict", files, data, wait)
            status, answer = response.status_code, _json(response)
            if status == 202:  # not final within the wait: follow its status URL
                status, answer = _await_final(http, base_url, answer["status_url"], wait)
            if status != 200:
                results += [(p, answer) for p in chunk]
                continue
            results += list(zip(chunk, answer.get("tasks", [answer]), strict=True))
    return results


def _print_results(results: list[tuple[Path, dict[str, Any]]], as_json: bool) -> bool:
    """One line per file; whether every file was read."""
    ok = True
    for path, doc in results:
        if as_json:
            sys.stdout.write(json.dumps({"file": str(path), **doc}) + "\n")
        elif doc.get("state") == "SUCCESS":
            sys.stdout.write(f"{path}: {doc['digit']} ({doc['confidence']:.1%})\n")
        else:
            message = doc.get("error") or "unknown error"
            if isinstance(message, dict):
                message = message.get("message", message)
            sys.stdout.write(f"{path}: error: {message}\n")
        ok = ok and doc.get("state") == "SUCCESS"
    return ok


def act(base_url: str, command: str, task_id: str, owner_token: str) -> tuple[bool, str]:
    """Cancel or delete one upload of the owner token's; whether it was done, and a line saying what happened."""
    headers = {"X-Owner-Token": owner_token}
    with requests.Session() as http:
        if command == "cancel":
            response = http.post(f"{base_url}/tasks/{task_id}/cancel", headers=headers, timeout=30)
        else:
            response = http.delete(f"{base_url}/tasks/{task_id}", headers=headers, timeout=30)
    if response.status_code == 204:
        return True, f"{task_id}: deleted"
    answer = _json(response)
    if response.status_code == 200:
        return True, f"{task_id}: {answer['state']}"
    return False, f"{task_id}: error: {answer.get('error', {}).get('message', response.status_code)}"


def _parser() -> argparse.ArgumentParser:
    """The command line: predict, cancel, delete."""
    parser = argparse.ArgumentParser(prog="python -m scripts.cli", description="Read handwritten digits.")
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("predict", help="upload images and print their digits")
    cmd.add_argument("files", nargs="+", type=Path)
    cmd.add_argument("--json", action="store_true", help="print the status documents as JSON lines")
    cmd.add_argument("--webhook", help="also POST each final answer to this URL (signed, retried)")
    cmd.add_argument("--webhook-events", help="with --webhook: completed (default), or start,completed")
    for name, text in (("cancel", "cancel an unfinished upload"), ("delete", "delete an upload and its image")):
        task = sub.add_parser(name, help=text)
        task.add_argument("task_id")
    client = ClientSettings()
    for each in sub.choices.values():
        each.add_argument("--url", default=client.url, help="the service (default: $DIGITS_URL or :8000)")
        each.add_argument("--owner-token", default=client.owner_token,
                          help="your owner token (22-128 URL-safe characters; default $DIGITS_OWNER_TOKEN): uploads "
                               "are recorded under it, and only it may cancel or delete them")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, then predict (one line per file), cancel or delete."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    base_url = args.url.rstrip("/")
    if args.command in ("cancel", "delete") and not args.owner_token:
        log.error("%s needs --owner-token: the token the upload was made with", args.command)
        return 2
    missing = [p for p in getattr(args, "files", []) if not p.is_file()]
    if missing:
        log.error("no such file: %s", ", ".join(map(str, missing)))
        return 2
    try:
        if args.command != "predict":
            done, line = act(base_url, args.command, args.task_id, args.owner_token)
            sys.stdout.write(line + "\n")
            return 0 if done else 1
        results = predict(base_url, args.files, owner_token=args.owner_token, webhook=args.webhook,
                          webhook_events=args.webhook_events)
    except (requests.RequestException, OSError) as exc:
        log.error("cannot reach %s: %s", args.url, exc)
        return 2
    return 0 if _print_results(results, args.json) else 1


if __name__ == "__main__":
    raise SystemExit(main())
