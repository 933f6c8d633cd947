"""etcd's watch on this cluster's prefix, on a thread of its own: every change pokes the
coordinator's view loop, which then reads the view. Polling etcd's revision five times a
second cost an idle daemon 0.84 CPU-seconds a minute here; with the watch the loop polls only
as a safety net (every WATCHED_POLL seconds) and hears of an expired lease at once.

A stream that breaks or stays silent for READ_TIMEOUT seconds is opened again (on the next
endpoint); while none is open the loop polls at its fast rate, as before.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import threading
from collections.abc import Callable

import requests

from replicator.coordination.config import CoordinationConfig

log = logging.getLogger("replicator.coordination")
READ_TIMEOUT = 10.0   # seconds of silence before the stream is opened again
WATCHED_POLL = 2.0    # the view loop's safety-net poll while a watch stream is open


class Watch:
    def __init__(self, settings: CoordinationConfig, prefix: str,
                 poke: Callable[[], None]) -> None:
        self.settings, self.prefix, self.poke = settings, prefix, poke
        self.open = False  # a stream is established now
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._session = requests.Session()
        if settings.ca is not None:
            self._session.verify = str(settings.ca)
        if settings.cert is not None and settings.key is not None:
            self._session.cert = (str(settings.cert), str(settings.key))

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        def poke() -> None:
            if not loop.is_closed():
                loop.call_soon_threadsafe(self.poke)
        self._thread = threading.Thread(target=self._run, args=(poke,), name="etcd-watch",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._session.close()

    def _run(self, poke: Callable[[], None]) -> None:
        endpoints = list(self.settings.endpoints)
        index = 0
        while not self._stop.is_set():
            try:
                self._stream(endpoints[index % len(endpoints)], poke)
            except (requests.RequestException, ValueError, OSError) as exc:
                log.debug("etcd watch on %s ended: %s", endpoints[index % len(endpoints)], exc)
            self.open = False
            index += 1
            self._stop.wait(0.2)  # then the next endpoint

    def _stream(self, endpoint: str, poke: Callable[[], None]) -> None:
        prefix = self.prefix.encode()
        end = prefix[:-1] + bytes([prefix[-1] + 1])
        body = {"create_request": {"key": base64.b64encode(prefix).decode(),
                                   "range_end": base64.b64encode(end).decode()}}
        with self._session.post(f"{endpoint}/v3/watch", data=json.dumps(body), stream=True,
                                timeout=(self.settings.request_timeout, READ_TIMEOUT)) as reply:
            reply.raise_for_status()
            for line in reply.iter_lines():
                if self._stop.is_set():
                    return
                if line:
                    self.open = True  # the first line is the watch's creation
                    poke()
