"""Delivers webhooks: signed JSON POSTs, retried with backoff on threads of their own.

A delivery never runs on the event loop nor in the store's thread pool, so a slow or dead receiver
never holds up an RPC. Deliveries live in memory: those still pending when the server stops are
dropped (receivers can catch up with ListIncidents or WatchAlerts).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from foedus.client_sdk.webhooks import SIGNATURE_HEADER, sign

log = logging.getLogger("foedus.server.webhooks")


class WebhookDispatcher:
    def __init__(
        self, *, attempts: int = 5, backoff_s: float = 1.0, timeout_s: float = 10.0, threads: int = 4
    ) -> None:
        """Each delivery is tried up to `attempts` times, waiting `backoff_s`, then twice as long
        each time; a 2xx answer within `timeout_s` counts as delivered."""
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="foedus-webhook")
        self._stopping = threading.Event()

    def submit(self, url: str, secret: str, body: bytes, event_type: str) -> None:
        """Queues one delivery; returns at once."""
        if self._stopping.is_set():
            return
        with contextlib.suppress(RuntimeError):  # shut down meanwhile
            self._pool.submit(self._deliver, url, secret, body, event_type)

    def close(self) -> None:
        """Stops retrying and drops what is pending."""
        self._stopping.set()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _deliver(self, url: str, secret: str, body: bytes, event_type: str) -> bool:
        wait = self.backoff_s
        for attempt in range(1, self.attempts + 1):
            # The service accepts only http(s) URLs (IncidentService.set_webhook).
            request = urllib.request.Request(  # noqa: S310
                url,
                data=body,
                method="POST",
                headers={
                    "Content-Type": "application/json",
                    "User-Agent": "foedus-webhooks/1",
                    "X-Foedus-Event": event_type,
                    # Signed at each attempt: the timestamp says when this attempt was sent.
                    SIGNATURE_HEADER: sign(secret, body),
                },
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:  # noqa: S310
                    if 200 <= response.status < 300:
                        return True
                    problem = f"HTTP {response.status}"
            except urllib.error.HTTPError as exc:
                problem = f"HTTP {exc.code}"
            except (OSError, ValueError) as exc:
                problem = str(exc)
            if attempt == self.attempts or self._stopping.wait(wait):
                log.warning(
                    "webhook %s to %s failed after %d attempt(s): %s", event_type, url, attempt, problem
                )
                return False
            wait *= 2
        return False
