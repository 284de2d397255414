"""Polling: fetch the bundle every interval (with jitter), back off on errors, activate what the
store accepts, and start from the persisted bundle when the source is down at boot."""
from __future__ import annotations

import asyncio
import gc
import logging
import random
import threading
import time
from pathlib import Path
from typing import Protocol

from gwc.runtime.bundle.read import Bundle, BundleError, digest_of
from gwc.runtime.bundle.source import BundleSource, SourceError
from gwc.runtime.bundle.store import BundleStore

log = logging.getLogger("gwc.bundle")
MAX_BACKOFF_S = 300.0
SWEEP_S = 0.05  # while a bundle is checked, the young generation is collected this often
_COLLECTOR = threading.Lock()  # one check at a time pauses and restores the collector


def check_quietly(store: BundleStore, data: bytes) -> Bundle | None:
    """``store.check`` with CPython's cyclic garbage collector paused, the accepted bundle frozen.

    Call it in a worker thread. A 2,000-server bundle is about 450,000 tracked objects. Left to
    the collector, parsing it triggers several full collections that rescan every live object,
    the previous bundle included (1.4 s of parsing instead of 0.3 s, during which the event loop
    waits for the GIL), and the new objects then wait in the young generations for more rescans.

    - Pausing is process-wide, so the event loop's own allocations are not collected either while
      this runs: cyclic garbage from the requests served meanwhile (a fraction of a second)
      waits for the next collection; reference counting still frees everything else. The lock
      keeps two checks from interleaving their disable/enable, and a collector that was already
      off (``gwc`` turns it off for a CLI run) stays off.
    - ``gc.collect()`` first, so little garbage is frozen with the bundle: after the first
      activation, only what was created since the previous one is scanned, which is cheap.
    - The switch interval is at least 5 ms during the check (CPython's default; gwc-runtime
      sets 0.5 ms so that the audit writer gets the GIL soon). With 0.5 ms, a busy event loop
      takes the GIL back from the check every 0.5 ms, and a check of a bundle whose every server
      changed took 0.68-1.52 s on a saturated node instead of 0.41-1.18 s (bench/hotswap.py, two
      rounds each on a busy machine); the loop's longest stall was about the same either way
      (its ticker: up to 79 and 49 ms; it gets the GIL back within 5 ms each time). Meanwhile
      the audit writer may wait up to 5 ms for the GIL, as before gwc-runtime lowered it.
      Restored afterwards, like the collector.
    - ``gc.collect(0)`` again before freezing: requests served during the check leave cyclic
      garbage (an exception's traceback, say) that names the bundle active meanwhile; frozen,
      it would never be collected and would keep that bundle alive for good once replaced (100 MB
      per activation with every server changed, bench/hotswap.py found). Everything created
      during the check is young, so this scans only what is newer than the poller's last sweep
      (:meth:`BundlePoller._sweep`). Garbage that requests still in flight at that instant make
      later can still be frozen; bench/hotswap.py reports the RSS.
    - ``gc.freeze()`` moves every tracked object to the permanent generation, which collections
      never scan: the bundle costs no GC time while it serves (a full collection with one
      bundle unfrozen takes 0.25 s on this bench machine and stalls the loop as long). A frozen
      object is still freed by reference counting, and bundles hold no reference cycles, so a
      replaced bundle is freed in full. What freezing does give up: objects alive at this
      moment (requests in flight, say) that later become unreachable *cycles* are never
      collected. A refused call was such a cycle until its verdict stopped keeping the raised
      refusal (``Verdict.take_refusal``; a test frees one with the collector off): one in flight at
      the freeze kept the replaced bundle alive for good (bench/README.md, issue 15).
      bench/hotswap.py reports the node's RSS after each swap.
    """
    active, digest = store.active, digest_of(data)
    if active is not None and digest == active.digest:
        return None  # the very bytes already serving (a restart, a republished file): no work
    with _COLLECTOR:
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            gc.collect()
            bundle = store.check(data, digest)
            if bundle is not None:
                gc.collect(0)
                gc.freeze()
            return bundle
        finally:
            if was_enabled:
                gc.enable()


def release_piecewise(retired: list[Bundle]) -> None:
    """Free replaced bundles a server and a rule at a time (call it in a worker thread).

    Freeing a 2,000-server bundle is one cascade of deallocations, 50-120 ms with the GIL held:
    wherever its last reference goes, the event loop waits that long. Here the interpreter can
    switch threads between pieces. If something still holds a bundle (a very long request),
    this only drops the poller's references, and the bundle is freed later, in one piece.
    """
    while retired:
        payload = retired.pop().payload
        pieces: list[object] = [*payload.servers.values(), *payload.rules]
        del payload
        while pieces:
            pieces.pop()


class LoopLag:
    """The longest time the event loop went without running a 1 ms timer, while :meth:`run` runs.

    Debug only (the poller runs one during a check when ``gwc.bundle`` logs at debug level): it
    is how long requests could not be served at all while a bundle was being checked."""

    def __init__(self) -> None:
        self.worst_s = 0.0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(0.001)
            self.worst_s = max(self.worst_s, loop.time() - before - 0.001)


class PollerMetrics(Protocol):
    """What the poller reports; the node's ``Metrics`` provides it (the contract imports no node part)."""

    def count_bundle_load(self, result: str) -> None: ...

    def bundle_activated(self, serial: int, activation_s: float) -> None: ...


class BundlePoller:
    def __init__(self, source: BundleSource, store: BundleStore, metrics: PollerMetrics,
                 interval_s: float = 30.0) -> None:
        self._source, self._store, self._metrics = source, store, metrics
        self._interval = interval_s
        self._etag: str | None = None
        self._failures = 0
        # Bundles replaced by the last activation, freed at the next round: by then the requests
        # that started under them are done with them.
        self._retired: list[Bundle] = []

    async def poll_once(self) -> str:
        """One round: ``activated``, ``unchanged``, ``refused`` or ``fetch_error``."""
        result = await self._poll()
        self._metrics.count_bundle_load(result)
        return result

    async def _poll(self) -> str:
        if self._retired:
            retired, self._retired = self._retired, []
            await asyncio.to_thread(release_piecewise, retired)
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
        started = time.perf_counter()
        lag = LoopLag() if log.isEnabledFor(logging.DEBUG) else None
        ticker = asyncio.create_task(lag.run()) if lag is not None else None
        # Written and synced while the bundle is checked (file I/O, off the GIL), so that an
        # accepted bundle is persisted with one rename: 30-100 ms less per activation.
        staging = asyncio.create_task(asyncio.to_thread(self._store.stage, fetched.data))
        sweeper = asyncio.create_task(self._sweep())
        persisted = False
        try:
            try:
                bundle = await asyncio.to_thread(check_quietly, self._store, fetched.data)
            except BundleError as exc:
                active = self._store.active
                log.error("bundle refused", extra={"reason": str(exc),
                                                   "source": self._source.location,
                                                   "active_serial": active.serial if active else None})
                return "refused"
            if bundle is None:
                return "unchanged"
            check_s = time.perf_counter() - started
            try:
                await asyncio.to_thread(self._store.commit, await staging)
                persisted = True
            except OSError as exc:  # serving the newer bundle matters more than keeping a copy
                log.error("could not persist the bundle", extra={"reason": str(exc)})
        finally:
            sweeper.cancel()
            if ticker is not None:
                ticker.cancel()
            if not persisted:
                await self._discard(staging)
        self._activate(bundle, "source", started, check_s, lag)
        return "activated"

    @staticmethod
    async def _sweep() -> None:
        """Collect the young generation every SWEEP_S while a bundle is checked with the
        collector paused: each sweep scans only what the last 50 ms made (a few ms), so the one
        before the freeze (check_quietly) is short too, where it would otherwise scan every new
        object of the bundle in one go (78,000 with every server changed: 12-58 ms)."""
        while True:
            await asyncio.sleep(SWEEP_S)
            gc.collect(0)

    async def _discard(self, staging: asyncio.Task[Path | None]) -> None:
        """Remove the copy staged for a bundle that is not activated (or not persisted)."""
        try:
            staged = await staging
        except OSError:
            return  # nothing was left behind: stage() cleans up after itself
        await asyncio.to_thread(self._store.discard, staged)

    def _activate(self, bundle: Bundle, origin: str, started: float, check_s: float,
                  lag: LoopLag | None = None) -> None:
        """Swap; the log line times the activation from the fetched bytes: ``check_s`` to verify,
        parse and vet them, ``activation_s`` until the swap (persisting included), and at debug
        level ``loop_stall_ms``, the event loop's longest stall meanwhile (:class:`LoopLag`)."""
        if self._store.active is not None:
            self._retired.append(self._store.active)
        self._store.activate(bundle)
        activation_s = time.perf_counter() - started
        self._metrics.bundle_activated(bundle.serial, activation_s)
        timing = {"check_s": round(check_s, 4), "activation_s": round(activation_s, 4)}
        if lag is not None:
            timing["loop_stall_ms"] = round(lag.worst_s * 1000, 1)
        log.info("bundle activated", extra={"digest": bundle.digest, "serial": bundle.serial,
                                            "revision": bundle.payload.revision, "from": origin,
                                            **timing})

    async def start(self) -> None:
        """First load: the persisted last good bundle (verified again), then the source.

        Starting from the persisted bundle keeps rollback protection across restarts: a source
        that now serves an older serial is refused, as it would have been before the restart.
        """
        data = self._store.persisted()
        if data is not None:
            started = time.perf_counter()
            try:
                bundle = await asyncio.to_thread(check_quietly, self._store, data)
            except BundleError as exc:
                log.error("persisted bundle refused", extra={"reason": str(exc)})
            else:
                if bundle is not None:
                    self._activate(bundle, "persisted", started, time.perf_counter() - started)
        await self.poll_once()
        if self._store.active is None:
            log.error("no bundle: the source failed and nothing usable is persisted; not ready")

    def next_delay(self) -> float:
        """The interval with +-20% jitter, or exponential backoff (with jitter) after failures."""
        if self._failures:
            return min(MAX_BACKOFF_S, 2.0 ** min(self._failures, 10)) * random.uniform(0.5, 1.0)
        return self._interval * random.uniform(0.8, 1.2)

    async def close(self) -> None:
        """Close the source (an HTTP source holds a connection pool); the node calls it at shutdown."""
        await self._source.close()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.next_delay())
            try:
                await self.poll_once()
            except Exception:  # a bug must not stop polling; the active bundle keeps serving
                log.exception("bundle poll crashed")
