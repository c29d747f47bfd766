"""shared/queue.py's enqueue on the real Redis, through a relay that breaks the link at one chosen command:
a broken link always surfaces as kombu's OperationalError (the web's 503), and the next upload goes through."""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import Iterator

import pytest
import redis
from kombu.exceptions import OperationalError as KombuOperationalError

from shared.queue import ChannelLost, enqueue, make_celery

RETRY_POLICY = {"max_retries": 1, "interval_start": 0.2, "interval_step": 0.5}  # the web's


class CommandTrap:
    """A TCP relay to Redis that swallows everything a connection sends from the first time it sends `command`
    on (a link cut without a reset, as a dropped route does); it does that once, later connections pass."""

    def __init__(self, target: tuple[str, int], command: bytes) -> None:
        self.target, self.command = target, command
        self.sprung = threading.Event()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._open: list[socket.socket] = [self._server]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self._open += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, from_client: bool) -> None:
        swallowing = False
        while True:
            try:
                data = source.recv(65536)
                if not data:
                    return
                if from_client and not self.sprung.is_set() and self.command in data.upper():
                    self.sprung.set()
                    swallowing = True
                if not swallowing:
                    sink.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        for sock in self._open:
            sock.close()


@pytest.fixture
def redis_address(redis_url: str) -> tuple[str, int]:
    connection = redis.Redis.from_url(redis_url).connection_pool.connection_kwargs
    return connection.get("host", "127.0.0.1"), int(connection.get("port", 6379))


@pytest.fixture
def trap(redis_address: tuple[str, int]) -> Iterator[CommandTrap]:
    # The queue's binding is declared with SADD before the first publish on each connection.
    relay = CommandTrap(redis_address, b"SADD")
    yield relay
    relay.close()


def test_a_link_broken_while_a_publish_declares_its_queue_is_a_broker_error(trap, redis_url: str):
    db = redis_url.rsplit("/", 1)[-1]
    producer = make_celery(f"redis://127.0.0.1:{trap.port}/{db}", f"q-{uuid.uuid4().hex[:8]}", socket_timeout=1.0)
    queue = producer.conf.task_default_queue
    with pytest.raises(KombuOperationalError) as refused:
        enqueue(producer, queue, [str(uuid.uuid4())], RETRY_POLICY)
    assert trap.sprung.is_set()
    # The declare's own retry reconnected and closed the channel the publish went on to write on (kombu#2275).
    assert isinstance(refused.value, ChannelLost) and "'client'" in str(refused.value)
    # The producer went back to its pool without that channel: the next upload is queued.
    task_id = str(uuid.uuid4())
    enqueue(producer, queue, [task_id], RETRY_POLICY)
    assert task_id.encode() in b"".join(redis.Redis.from_url(redis_url).lrange(queue, 0, -1))
    redis.Redis.from_url(redis_url).delete(queue)
