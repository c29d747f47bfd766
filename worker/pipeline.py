"""Turn queued task ids into stored predictions: look up, claim, preprocess, one model call, finish.

Every state change goes through shared/predictions.py. Uploads that a worker already started once and
that never finished (their worker died or stalled) are tried one at a time, after the fresh ones are
stored, with nothing else in flight in the process (worker/isolation.py): an image that kills the
process then takes nothing else down with it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from sqlalchemy import Engine

from shared import predictions
from shared.deliveries import Hold
from shared.errors import INFRA_ERRORS
from shared.imaging import ImageRejected
from shared.predictions import Claim, Found
from shared.schema import State, status_document
from worker.isolation import Isolation
from worker.leases import Leases

log = logging.getLogger(__name__)

class Model(Protocol):
    """What the pipeline needs of a model: its name and version, and a batched call."""

    name: str
    version: str

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities (N, 10) for (N, 28, 28) images."""
        ...


class Outbox(Protocol):
    """What the pipeline needs of this process's webhook sender (worker/webhooks.py's Deliverer)."""

    def reserve(self, count: int) -> Hold | None:
        """Room to hold up to `count` events as they are scheduled, or None."""
        ...

    def hand(self, hold: Hold, committed: bool = True) -> None:
        """Send what the hold holds (its transaction committed), or give its room back (it did not)."""
        ...

    def scheduled(self) -> None:
        """Events nobody holds were scheduled: take them now."""
        ...


Docs = dict[str, dict[str, Any]]


@dataclass
class Pipeline:
    """One worker process's way from task ids to stored, cached answers."""

    engine: Engine
    model: Model
    worker_name: str
    preprocess: Callable[[bytes], np.ndarray]
    leases: Leases
    max_attempts: int
    publish: Callable[[Iterable[dict[str, Any]]], None]  # cache and announce final documents
    isolation: Isolation = field(default_factory=Isolation)  # one per process: every runner shares it
    # This process's webhook sender: it holds the `completed` events a batch schedules, and hears of the rest.
    webhooks: Outbox | None = None

    def run(self, task_ids: Sequence[str]) -> Docs:
        """Predict every task id's upload that is ours to do; each id's status document, in order."""
        with self.engine.begin() as conn:
            found = predictions.look_up(conn, task_ids)
        claimable = [f for f in found.values() if f.claimable]
        docs: Docs = {}
        poisoned = [f for f in claimable if f.deliveries >= self.max_attempts]
        if poisoned:  # its last delivery died too: it will not be tried again
            docs |= self._fail_poison(poisoned)
        fresh = [f.task_id for f in claimable if f.deliveries == 0]
        if fresh:
            docs |= self._attempt(fresh, deliveries=0)
        for item in claimable:
            if 0 < item.deliveries < self.max_attempts:
                docs |= self._attempt([item.task_id], deliveries=item.deliveries)
        docs |= self._others([t for t in dict.fromkeys(task_ids) if t not in docs], found)
        return {task_id: docs[task_id] for task_id in task_ids}

    def _fail_poison(self, poisoned: list[Found]) -> Docs:
        with self.engine.begin() as conn:
            docs = predictions.fail_poison(conn, poisoned)
        if any(doc.get("webhook") for doc in docs.values()):
            self._webhooks_scheduled()
        log.error("gave up on %d upload(s) that killed or stalled %d+ workers", len(docs), self.max_attempts,
                  extra={"task_ids": list(docs)})
        self.publish(docs.values())
        return docs

    def _others(self, task_ids: list[str], found: dict[str, Found]) -> Docs:
        """Documents of ids this run did not finish: final, held by another worker, or unknown."""
        if not task_ids:
            return {}
        with self.engine.begin() as conn:
            docs = predictions.stored_documents(conn, task_ids)
        for task_id in task_ids:
            if task_id not in found:
                # The web writes the row before it enqueues, so the upload was deleted while its message waited
                # (or the message came from elsewhere): nothing to do, nothing to crash on.
                log.warning("task %s has no row in the database (deleted?); dropping its message", task_id)
                docs[task_id] = status_document({"task_id": task_id, "state": State.FAILURE.value,
                                                 "error": "unknown upload"})
        return docs

    def _attempt(self, task_ids: list[str], deliveries: int) -> Docs:
        """Claim, predict and finish these uploads; what was finished (nothing if others claimed them first)."""
        with self.isolation.shared() if deliveries == 0 else self.isolation.alone():
            return self._claim_and_finish(task_ids, deliveries)

    def _claim_and_finish(self, task_ids: list[str], deliveries: int) -> Docs:
        with self.engine.begin() as conn:
            claim = predictions.claim(conn, task_ids, deliveries, self.worker_name, self.leases.seconds)
        if not claim.images:
            return {}
        if any(hook.wants("start") for hook in claim.hooks.values()):
            self._webhooks_scheduled()
        with self.leases.holding(claim):
            try:
                results = self._predict(claim)
                docs, hold = self._finish(claim, results)
            except INFRA_ERRORS:
                self._release(claim)
                raise
        try:
            self.publish(docs.values())  # the answers first: waking a sender before them delayed them
        finally:
            self._send_webhooks(claim, hold)
        return docs

    def _finish(self, claim: Claim, results: dict[str, dict[str, Any]]) -> tuple[Docs, Hold | None]:
        """Store the results; their `completed` webhooks are held for this process's sender as they are scheduled."""
        outbox = self.webhooks
        hold = outbox.reserve(len(claim.hooks)) if claim.hooks and outbox is not None else None
        try:
            with self.engine.begin() as conn:
                return predictions.finish(conn, claim, results, hold), hold
        except BaseException:
            if outbox is not None and hold is not None:
                outbox.hand(hold, committed=False)
            raise

    def _send_webhooks(self, claim: Claim, hold: Hold | None) -> None:
        """Hand this process's sender what the batch's transaction held for it; wake it for anything else."""
        if self.webhooks is not None and hold is not None:
            self.webhooks.hand(hold)
        if claim.hooks and (hold is None or hold.room < len(claim.hooks)):
            self._webhooks_scheduled()  # some events nobody holds (unless finish was fenced): a take sends them

    def _webhooks_scheduled(self) -> None:
        """Wake this process's webhook sender (its poll would find the deliveries within a second anyway)."""
        if self.webhooks is not None:
            try:
                self.webhooks.scheduled()
            except Exception:  # a wake-up only: never fail a stored batch over it
                log.exception("could not wake the webhook sender")

    def _release(self, claim: Claim) -> None:
        try:
            with self.engine.begin() as conn:
                predictions.release(conn, claim)
        except INFRA_ERRORS as exc:  # the lease runs out instead
            log.warning("could not give back claim %s: %s", claim.token, exc)

    def _predict(self, claim: Claim) -> dict[str, dict[str, Any]]:
        """The result columns of each claimed upload: a digit, or the reason it could not be read."""
        model = self.model  # read once: a rollout swaps it between batches, never within one
        t0 = time.perf_counter()
        images, errors = self._preprocess(claim.images)
        preprocess_ms = round((time.perf_counter() - t0) * 1000 / len(claim.images), 3)
        probabilities, inference_ms = self._infer(model, images)
        common = {"preprocess_ms": preprocess_ms, "model_name": model.name, "model_version": model.version}
        results = {task_id: {**common, **_success(probs, inference_ms)}
                   for task_id, probs in zip(images, probabilities, strict=True)}
        for task_id, error in errors.items():
            results[task_id] = {**common, **_failure(error)}
        return results

    def _preprocess(self, raw: dict[str, bytes]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """Each upload as a 28x28 MNIST-like array, or why it cannot be read."""
        images: dict[str, np.ndarray] = {}
        errors: dict[str, str] = {}
        for task_id, data in raw.items():
            try:
                images[task_id] = self.preprocess(data)
            except ImageRejected as exc:
                errors[task_id] = str(exc)
            except Exception as exc:  # a bad image must end as FAILURE, never block the queue
                log.exception("preprocessing failed for task %s", task_id)
                errors[task_id] = f"could not read this image ({type(exc).__name__})"
        return images, errors

    @staticmethod
    def _infer(model: Model, images: dict[str, np.ndarray]) -> tuple[np.ndarray, float]:
        """One model call for the whole batch; its probabilities and milliseconds."""
        if not images:
            return np.empty((0, 10), np.float32), 0.0
        t0 = time.perf_counter()
        probabilities = model.predict(np.stack(list(images.values())))
        return probabilities, round((time.perf_counter() - t0) * 1000, 3)


def _success(probs: np.ndarray, inference_ms: float) -> dict[str, Any]:
    return {"state": State.SUCCESS.value, "digit": int(np.argmax(probs)),
            "confidence": round(float(np.max(probs)), 6), "probabilities": [round(float(p), 6) for p in probs],
            "inference_ms": inference_ms, "error": None}


def _failure(error: str) -> dict[str, Any]:
    return {"state": State.FAILURE.value, "digit": None, "confidence": None, "probabilities": None,
            "inference_ms": None, "error": error}
