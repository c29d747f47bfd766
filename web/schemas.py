"""The API's shapes and limits, each defined once: the views validate with them and web/openapi.py generates
/openapi.json from them, so the description cannot drift from the code."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, RootModel, ValidationError, create_model
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import ErrorDetails

from shared.config import Settings
from shared.idempotency import MAX_KEY_LENGTH
from shared.schema import State
from shared.webhooks import MAX_URL_LENGTH, WEBHOOK_EVENTS
from web.errors import ApiError
from web.owner import HEADER, TOKEN

TASK_ID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
TASK_ID = re.compile(TASK_ID_PATTERN)
MAX_WAIT_SECONDS = 30.0
MAX_IDS = 100
MAX_PAGE = 1_000_000
MAX_PER_PAGE = 100
DIGITS = 10  # the model's classes: one probability per digit

TaskId = Annotated[str, Field(pattern=TASK_ID_PATTERN, description="A task id (a UUID)")]


# ---- Query strings: parsed as the views always parsed them, then checked against the limits above ----


def _seconds(raw: object) -> object:
    """?wait= as Python reads a number ('', absent: no wait); what is not one becomes NaN, which is refused."""
    if raw is None or raw == "":
        return 0.0
    if isinstance(raw, str):
        try:
            return float(raw)
        except ValueError:
            return math.nan
    return raw


def _whole_or(default: int) -> Callable[[object], object]:
    """A lenient integer, as the history always read its paging: junk or 0 means the default."""
    def parse(raw: object) -> object:
        try:
            return int(str(raw)) or default
        except (TypeError, ValueError):
            return default
    return parse


def _comma_separated(raw: object) -> object:
    """?ids=a,b,c as a list, empty items dropped; too few or too many is refused before any id is looked at."""
    items = [item for item in raw.split(",") if item] if isinstance(raw, str) else raw
    # Checked here as well as by the field's bounds: pydantic reports a list's length only when its items pass.
    if isinstance(items, list) and not 1 <= len(items) <= MAX_IDS:
        raise ValueError(f"between 1 and {MAX_IDS} ids")
    return items


# The constraints come before the parsing validator: after one, pydantic describes them as ge/le, not OpenAPI's terms.
Seconds = Annotated[float, Field(
    ge=0, le=MAX_WAIT_SECONDS, allow_inf_nan=False,
    description="Hold the answer up to this many seconds until it is final (long poll); 0 answers at once."),
    BeforeValidator(_seconds)]
Until = Annotated[Literal["all", "any"], Field(
    description="With wait: `all` holds until every task is final, `any` until one is.")]


class Query(BaseModel):
    """A query string's parameters; the first that breaks its rule is refused with that field's error."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    refusals: ClassVar[Mapping[str, tuple[int, str, str]]] = {}

    @classmethod
    def parse(cls, args: Mapping[str, str]) -> Self:
        """The parameters of a request's query string, or the ApiError of the first refused one."""
        try:
            return cls.model_validate(dict(args.items()))  # a repeated name: its first value, as args.get reads
        except ValidationError as exc:
            raise cls.refusal(exc.errors(include_url=False)) from None

    @classmethod
    def refusal(cls, errors: Sequence[ErrorDetails]) -> ApiError:
        """The error of the first refused field (pydantic reports fields in their declared order)."""
        return ApiError(*cls.refusals[str(errors[0]["loc"][0])])


BAD_WAIT = (400, "bad_wait", f"wait must be a number of seconds from 0 to {MAX_WAIT_SECONDS:g}.")
BAD_UNTIL = (400, "bad_until", "until must be 'all' or 'any'.")


class PredictQuery(Query):
    """POST /predict's query: one-request mode."""

    refusals = {"wait": BAD_WAIT}
    wait: Seconds = Field(0.0, description=(
        "One-request mode: hold the answer up to this many seconds until every upload is final, then answer 200 "
        "with the final status document (several files: {\"tasks\": [...]}); if they are not final by then, the "
        "usual 202. The uploads are recorded and queued exactly as without it."))


class TaskQuery(Query):
    """GET /tasks/<id>'s query: how long to hold the answer."""

    refusals = {"wait": BAD_WAIT, "until": BAD_UNTIL}
    wait: Seconds = 0.0
    until: Until = "all"


class TasksQuery(Query):
    """GET /tasks' query: which tasks, and how long to hold the answer."""

    refusals = {**TaskQuery.refusals, "ids": (400, "bad_ids", f"Give between 1 and {MAX_IDS} task ids as ?ids=a,b,c.")}
    # Declared first: the ids are checked before wait and until, as they always were.
    ids: Annotated[list[TaskId], Field(
        min_length=1, max_length=MAX_IDS, description=f"Comma-separated task ids (at most {MAX_IDS})",
        # OpenAPI's way of saying ids=a,b,c (rather than ids=a&ids=b); spectree moves these onto the parameter.
        json_schema_extra={"style": "form", "explode": False}), BeforeValidator(_comma_separated)]
    wait: Seconds = 0.0
    until: Until = "all"

    @classmethod
    def refusal(cls, errors: Sequence[ErrorDetails]) -> ApiError:
        """Too few or too many ids is a 400; ids that are not task ids are unknown tasks (404), all named."""
        bad = [str(e["input"]) for e in errors if e["loc"][:1] == ("ids",) and len(e["loc"]) == 2]
        if errors[0]["loc"] == ("ids",) or not bad:  # no ids, too many, or a bad wait or until
            return super().refusal(errors)
        return ApiError(404, "not_found", f"No such task: {', '.join(bad)}.")


class PageQuery(Query):
    """GET /predictions' query: which page of the history."""

    refusals = {name: (400, "bad_page", f"page must be between 1 and {MAX_PAGE}, per_page between 1 and "
                                        f"{MAX_PER_PAGE}.") for name in ("page", "per_page")}
    page: Annotated[int, Field(ge=1, le=MAX_PAGE), BeforeValidator(_whole_or(1))] = 1
    per_page: Annotated[int, Field(ge=1, le=MAX_PER_PAGE), BeforeValidator(_whole_or(20))] = 20


def _no_default(schema: dict[str, Any]) -> None:
    """Leave a field's default out of its JSON schema."""
    schema.pop("default", None)


class OwnerHeader(BaseModel):
    """The owner token an API client may send (the page uses a cookie instead)."""

    # A header is a string or absent, never null: the None (and its default) are the model's, not the description's.
    owner_token: Annotated[str, Field(pattern=TOKEN.pattern)] | SkipJsonSchema[None] = Field(
        None, alias=HEADER, json_schema_extra=_no_default, description=(
            "The client's own owner token (URL-safe characters, as its pattern says). Uploads are recorded under "
            "it, and GET /predictions lists only its uploads."))


IDEMPOTENCY_KEY = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"
KEY_PATTERN = rf"^[\x20-\x7e]{{1,{MAX_KEY_LENGTH}}}$"


class PredictHeaders(OwnerHeader):
    """POST /predict's headers: the owner token, and an Idempotency-Key that makes a retry safe."""

    idempotency_key: Annotated[str, Field(pattern=KEY_PATTERN)] | SkipJsonSchema[None] = Field(
        None, alias=IDEMPOTENCY_KEY, json_schema_extra=_no_default, description=(
            f"Makes a retried upload safe (1 to {MAX_KEY_LENGTH} printable ASCII characters, e.g. a UUID per "
            "request): a repeat with the same key and the same files and fields, within the key's lifetime "
            "(IDEMPOTENCY_TTL_SECONDS, 24 h by default), records nothing and answers with the first request's task "
            f"ids and `{REPLAYED}: true`. Keys belong to the owner token, which such a request must bring "
            f"({HEADER} or the page's cookie)."))


class WebhookFields(BaseModel):
    """POST /predict's optional form fields asking for a webhook."""

    webhook: Annotated[str, Field(max_length=MAX_URL_LENGTH)] | SkipJsonSchema[None] = Field(
        None, json_schema_extra=_no_default, description=(
            "An http(s) URL to POST each upload's status document to once it is final, signed per Standard Webhooks "
            "(webhook-id, webhook-timestamp, webhook-signature) and retried with back-off until the receiver answers "
            "2xx. Hosts resolving to loopback, private or link-local addresses are refused unless the operator "
            "allows them (WEBHOOK_ALLOWED_HOSTS); refused when the service has no WEBHOOK_SECRET."))
    webhook_events: str | SkipJsonSchema[None] = Field(
        None, json_schema_extra=_no_default, description=(
            f"With `webhook`: the events to send, comma-separated, from {', '.join(WEBHOOK_EVENTS)}; `completed` by "
            "default."))


def upload_form(settings: Settings) -> type[BaseModel]:
    """POST /predict's multipart body, with this app's limits."""
    image = Annotated[bytes, Field(max_length=settings.max_upload_bytes)]
    return create_model("Upload", __base__=WebhookFields, file=(list[image], Field(
        min_length=1, max_length=settings.max_files_per_request, description=(
            f"The images: PNG, JPEG, GIF, BMP, WebP or TIFF, one digit each; at most "
            f"{settings.max_files_per_request} files of at most {settings.max_upload_bytes} bytes, sides from "
            f"{settings.min_image_side} to {settings.max_image_side} pixels, at most {settings.max_image_pixels} "
            f"pixels."))))


# ---- Answers ----


class ErrorDetail(BaseModel):
    """What went wrong: a stable code for programs and a sentence for people."""

    code: str
    message: str


class ErrorDocument(BaseModel):
    """Every error answer of the API."""

    error: ErrorDetail


class WebhookReport(BaseModel):
    """The delivery of an upload's `completed` webhook: tried until delivered, or given up (FAILED)."""

    url: str
    events: list[Literal["start", "completed"]]  # shared/webhooks.WEBHOOK_EVENTS (a test keeps them alike)
    state: Literal["PENDING", "DELIVERED", "FAILED"]
    attempts: Annotated[int, Field(ge=0)]
    last_status: int | None = Field(description="The receiver's last HTTP status; null if none answered yet")
    delivered: bool


class Status(BaseModel):
    """A status document: where an upload is, and its answer once it has one."""

    task_id: TaskId
    state: State
    digit: Annotated[int, Field(ge=0, le=DIGITS - 1)] | None
    confidence: Annotated[float, Field(ge=0, le=1)] | None
    probabilities: Annotated[list[float], Field(min_length=DIGITS, max_length=DIGITS)] | None
    model_name: str | None = Field(description="The model that read it: its architecture, e.g. seed-cnn")
    model_version: str | None = Field(description="The model that read it: the content hash of its file")
    error: str | None
    created_at: datetime | None
    finished_at: datetime | None
    data_removed: bool = Field(description="The image's bytes were removed by retention; the answer stays")
    webhook: WebhookReport | None = Field(description="The webhook asked for with the upload, and its delivery")


class Statuses(BaseModel):
    """Several status documents, in the order asked."""

    tasks: list[Status]


class Final(RootModel[Status | Statuses]):
    """One-request mode's answer: one upload's final status document, or several."""


class TaskLink(BaseModel):
    """An accepted upload: its task id and where to ask about it."""

    task_id: TaskId
    status_url: str


class FileTaskLink(TaskLink):
    """One of several accepted uploads."""

    filename: str | None


class TaskLinks(BaseModel):
    """Several accepted uploads (one queue message), and where to ask about all of them."""

    tasks: list[FileTaskLink]
    status_url: str


class Accepted(RootModel[TaskLink | TaskLinks]):
    """Recorded and queued: one upload, or several."""


class AlreadyFinal(ErrorDocument):
    """A cancel of an upload that is already final: the error, and the upload's status document."""

    task: Status


class HistoryItem(Status):
    """A status document in the history, with the upload's file name."""

    filename: str | None


class HistoryPage(BaseModel):
    """A page of history, newest first."""

    items: list[HistoryItem]
    page: int
    per_page: int
    total: int


class SystemInfo(BaseModel):
    """What serves uploads now, and the upload limits."""

    workers: Annotated[int, Field(ge=0)]
    model_versions: list[str]
    devices: list[str]
    queue_length: Annotated[int, Field(ge=0)]
    max_upload_bytes: int
    max_files_per_request: int


class Health(BaseModel):
    """The process serves."""

    status: str


class Readiness(BaseModel):
    """Whether Redis and the database answer, each named."""

    status: Literal["ready", "unavailable"]
    checks: dict[str, str]


def limits(settings: Settings) -> dict[str, Any]:
    """The limits the description's prose may name (only these: settings also hold credentials)."""
    return {"max_upload_bytes": settings.max_upload_bytes, "max_files_per_request": settings.max_files_per_request,
            "max_long_polls": settings.max_long_polls,
            "max_wait_seconds": MAX_WAIT_SECONDS, "max_ids": MAX_IDS}
