"""Polling: fetch the bundle every interval (with jitter), back off on errors, activate what the
store accepts, and start from the persisted bundle when the source is down at boot."""
from __future__ import annotations

import asyncio
import logging
import random

from runtime.bundle import Bundle, BundleError
from runtime.bundle_source import BundleSource, SourceError
from runtime.bundle_store import BundleStore
from runtime.metrics import Metrics

log = logging.getLogger("gwc.bundle")
MAX_BACKOFF_S = 300.0


class BundlePoller:
    def __init__(self, source: BundleSource, store: BundleStore, metrics: Metrics,
                 interval_s: float = 30.0) -> None:
        self._source, self._store, self._metrics = source, store, metrics
        self._interval = interval_s
        self._etag: str | None = None
        self._failures = 0

    async def poll_once(self) -> str:
        """One round: ``activated``, ``unchanged``, ``refused`` or ``fetch_error``."""
        result = await self._poll()
        self._metrics.bundle_loads.labels(result).inc()
        return result

    async def _poll(self) -> str:
        try:
            fetched = await self._source.fetch(self._etag)
        except SourceError as exc:
            self._failures += 1
            log.warning("bundle fetch failed", extra={"reason": str(exc),
                                                     "failures": self._failures})
            return "fetch_error"
        self._failures = 0
        if fetched is None:
            return "unchanged"
        # Remember the ETag even when refusing: the same bad bytes are not re-verified every poll.
        self._etag = fetched.etag
        try:
            bundle = await asyncio.to_thread(self._store.check, fetched.data)
        except BundleError as exc:
            active = self._store.active
            log.error("bundle refused", extra={"reason": str(exc), "source": self._source.location,
                                               "active_serial": active.serial if active else None})
            return "refused"
        if bundle is None:
            return "unchanged"
        try:
            await asyncio.to_thread(self._store.persist, fetched.data)
        except OSError as exc:  # serving the newer bundle matters more than keeping a copy
            log.error("could not persist the bundle", extra={"reason": str(exc)})
        self._activate(bundle, "source")
        return "activated"

    def _activate(self, bundle: Bundle, origin: str) -> None:
        self._store.activate(bundle)
        self._metrics.bundle_activated(bundle.serial)
        log.info("bundle activated", extra={"digest": bundle.digest, "serial": bundle.serial,
                                            "revision": bundle.payload.revision, "from": origin})

    async def start(self) -> None:
        """First load: the persisted last good bundle (verified again), then the source.

        Starting from the persisted bundle keeps rollback protection across restarts: a source
        that now serves an older serial is refused, as it would have been before the restart.
        """
        data = self._store.persisted()
        if data is not None:
            try:
                bundle = await asyncio.to_thread(self._store.check, data)
            except BundleError as exc:
                log.error("persisted bundle refused", extra={"reason": str(exc)})
            else:
                if bundle is not None:
                    self._activate(bundle, "persisted")
        await self.poll_once()
        if self._store.active is None:
            log.error("no bundle: the source failed and nothing usable is persisted; not ready")

    def next_delay(self) -> float:
        """The interval with +-20% jitter, or exponential backoff (with jitter) after failures."""
        if self._failures:
            return min(MAX_BACKOFF_S, 2.0 ** min(self._failures, 10)) * random.uniform(0.5, 1.0)
        return self._interval * random.uniform(0.8, 1.2)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.next_delay())
            try:
                await self.poll_once()
            except Exception:  # a bug must not stop polling; the active bundle keeps serving
                log.exception("bundle poll crashed")
