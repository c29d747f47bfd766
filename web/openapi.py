"""The API's OpenAPI description, served at /openapi.json (and checked against the app by schemathesis)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue

from web.api import MAX_WAIT_SECONDS

bp = Blueprint("openapi", __name__)


def _error(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "nullable": True}


UUID = {"type": "string", "pattern": "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"}
WAIT = {"name": "wait", "in": "query", "required": False,
        "description": "Hold the answer up to this many seconds until the task is final (long poll).",
        "schema": {"type": "number", "minimum": 0, "maximum": MAX_WAIT_SECONDS}}
PREDICT_WAIT = {**WAIT, "description": (
    "One-request mode: hold the answer up to this many seconds until every upload is final, then answer 200 with "
    "the final status document (several files: {\"tasks\": [...]}); if they are not final by then, the usual "
    "202. The uploads are recorded and queued exactly as without it.")}
OWNER = {"name": "X-Owner-Token", "in": "header", "required": False,
         "description": "The client's own owner token (22-128 URL-safe characters); the page uses a cookie instead. "
                        "Uploads are recorded under it, and GET /predictions lists only its uploads.",
         "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{22,128}$"}}
UNTIL = {"name": "until", "in": "query", "required": False,
         "description": "With wait: `all` (default) holds until every task is final, `any` until one is.",
         "schema": {"type": "string", "enum": ["all", "any"]}}

SPEC: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "Digit reader", "version": "1",
             "description": "Upload images of handwritten digits; they are queued, predicted, and stored."},
    "paths": {
        "/predict": {"post": {
            "summary": "Upload one or several images (multipart field `file`); `?wait=S` answers with the digits",
            "parameters": [OWNER, PREDICT_WAIT],
            "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                "type": "object", "required": ["file"],
                "properties": {"file": {"type": "array", "items": {"type": "string", "format": "binary"},
                                        "minItems": 1, "maxItems": 16}}}}}},
            "responses": {
                "200": {"description": "With `wait`: every upload final within it; their status documents",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Final"}}}},
                "202": {"description": "Recorded and queued",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Accepted"}}}},
                "400": _error("Not a usable image, blank, too many files, or a bad `wait`"),
                "413": _error("Larger than the service accepts"),
                "415": _error("Not an image, or not multipart/form-data"),
                "429": _error("Too many uploads from this address"),
                "503": _error("Queue or database unavailable"),
            }}},
        "/tasks/{task_id}": {"get": {
            "summary": "The state of one upload",
            "parameters": [{"name": "task_id", "in": "path", "required": True, "schema": {"type": "string"}}, WAIT],
            "responses": {
                "200": {"description": "Its status document",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Status"}}}},
                "400": _error("A `wait` that is not a number of seconds from 0 to 30"),
                "404": _error("No such task"),
                "503": _error("Database unavailable"),
            }}},
        "/tasks": {"get": {
            "summary": "The states of several uploads",
            "parameters": [{"name": "ids", "in": "query", "required": True,
                            "description": "Comma-separated task ids (at most 100)", "schema": {"type": "string"}},
                           WAIT, UNTIL],
            "responses": {
                "200": {"description": "Their status documents, in the order asked",
                        "content": {"application/json": {"schema": {
                            "type": "object", "required": ["tasks"],
                            "properties": {"tasks": {"type": "array",
                                                     "items": {"$ref": "#/components/schemas/Status"}}}}}}},
                "400": _error("No ids, or too many, or a bad `wait` or `until`"),
                "404": _error("An unknown id"),
                "503": _error("Database unavailable"),
            }}},
        "/predictions": {"get": {
            "summary": "The caller's recent predictions (by owner token; operators with basic auth: everyone's)",
            "parameters": [OWNER,
                {"name": "page", "in": "query", "required": False,
                 "schema": {"type": "integer", "minimum": 1, "maximum": 1_000_000}},
                {"name": "per_page", "in": "query", "required": False,
                 "schema": {"type": "integer", "minimum": 1, "maximum": 100}}],
            "responses": {
                "200": {"description": "A page of history", "content": {"application/json": {"schema": {
                    "type": "object", "required": ["items", "page", "per_page", "total"],
                    "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/Status"}},
                                   "page": {"type": "integer"}, "per_page": {"type": "integer"},
                                   "total": {"type": "integer"}}}}}},
                "400": _error("Bad page parameters"),
                "401": _error("Operator credentials that are not valid"),
                "503": _error("Database unavailable"),
            }}},
        "/system": {"get": {
            "summary": "Live workers, their model versions, the queue's length and the upload limits",
            "responses": {
                "200": {"description": "What serves uploads now", "content": {"application/json": {"schema": {
                    "type": "object",
                    "required": ["workers", "model_versions", "devices", "queue_length", "max_upload_bytes",
                                 "max_files_per_request"],
                    "properties": {"workers": {"type": "integer", "minimum": 0},
                                   "model_versions": {"type": "array", "items": {"type": "string"}},
                                   "devices": {"type": "array", "items": {"type": "string"}},
                                   "queue_length": {"type": "integer", "minimum": 0},
                                   "max_upload_bytes": {"type": "integer"},
                                   "max_files_per_request": {"type": "integer"}}}}}},
                "503": _error("Queue unavailable"),
            }}},
        "/healthz": {"get": {"summary": "The process serves", "responses": {"200": {"description": "Alive"}}}},
        "/readyz": {"get": {"summary": "Redis and the database answer",
                            "responses": {"200": {"description": "Ready"}, "503": {"description": "Not ready"}}}},
    },
    "components": {"schemas": {
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {
            "type": "object", "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}},
        "Task": {"type": "object", "required": ["task_id", "status_url"],
                 "properties": {"task_id": UUID, "status_url": {"type": "string"},
                                "filename": _nullable({"type": "string"})}},
        "Accepted": {"oneOf": [
            {"$ref": "#/components/schemas/Task"},
            {"type": "object", "required": ["tasks", "status_url"],
             "properties": {"tasks": {"type": "array", "items": {"$ref": "#/components/schemas/Task"}},
                            "status_url": {"type": "string"}}}]},
        "Final": {"oneOf": [
            {"$ref": "#/components/schemas/Status"},
            {"type": "object", "required": ["tasks"],
             "properties": {"tasks": {"type": "array", "items": {"$ref": "#/components/schemas/Status"}}}}]},
        "Status": {"type": "object",
                   "required": ["task_id", "state", "digit", "confidence", "probabilities", "model_version",
                                "error", "created_at", "finished_at"],
                   "properties": {
                       "task_id": UUID,
                       "state": {"type": "string", "enum": ["PENDING", "STARTED", "SUCCESS", "FAILURE"]},
                       "digit": _nullable({"type": "integer", "minimum": 0, "maximum": 9}),
                       "confidence": _nullable({"type": "number", "minimum": 0, "maximum": 1}),
                       "probabilities": _nullable({"type": "array", "items": {"type": "number"},
                                                   "minItems": 10, "maxItems": 10}),
                       "model_version": _nullable({"type": "string"}),
                       "error": _nullable({"type": "string"}),
                       "created_at": _nullable({"type": "string", "format": "date-time"}),
                       "finished_at": _nullable({"type": "string", "format": "date-time"}),
                       "filename": _nullable({"type": "string"}),
                   }},
    }},
}


@bp.get("/openapi.json")
def openapi() -> ResponseReturnValue:
    """The OpenAPI description of this API."""
    return jsonify(SPEC)
