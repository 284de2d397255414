"""Activation: the one place a verified bundle becomes the active one.

Refuses bad signatures, unknown formats, malformed payloads, rollbacks (a serial lower than the
active one) and a different bundle claiming the active serial. A refused bundle never replaces the
active one. Accepted bundles are persisted so a restart can serve while the source is down.
Swapping is a single attribute assignment: a request keeps the bundle it started with.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gwc.runtime.bundle.read import Bundle, BundleError, load_bundle

PERSISTED_NAME = "last-good-bundle.json"


class BundleStore:
    def __init__(self, trusted: dict[str, Ed25519PublicKey], state_dir: Path | None = None) -> None:
        self._trusted = trusted
        self._state_dir = state_dir
        self.active: Bundle | None = None
        self._on_activate: list[Callable[[Bundle | None, Bundle], None]] = []

    def on_activate(self, listener: Callable[[Bundle | None, Bundle], None]) -> None:
        """Call ``listener(old, new)`` after each swap (on the event loop; it must not block)."""
        self._on_activate.append(listener)

    @property
    def trusted_ids(self) -> frozenset[str]:
        return frozenset(self._trusted)

    def check(self, data: bytes, digest: str | None = None) -> Bundle | None:
        """Verify and vet a candidate (CPU work: call it off the event loop).

        Returns the bundle to activate, None when it is the active one already, or raises
        :class:`BundleError` with the reason it is refused. ``digest``: ``digest_of(data)`` if
        the caller has it.
        """
        bundle = load_bundle(data, self._trusted, digest)
        active = self.active
        if active is not None:
            if bundle.digest == active.digest:
                return None
            if bundle.serial < active.serial:
                raise BundleError(f"rollback refused: serial {bundle.serial} is lower than the "
                                  f"active serial {active.serial}")
            if bundle.serial == active.serial:
                raise BundleError(f"refused: a different bundle ({bundle.digest[:19]}) claims the "
                                  f"active serial {active.serial}")
        return bundle

    def activate(self, bundle: Bundle) -> None:
        """Make ``bundle`` active: one assignment, so in-flight requests keep theirs."""
        old, self.active = self.active, bundle
        for listener in self._on_activate:
            listener(old, bundle)

    def persist(self, data: bytes) -> None:
        """Keep the bytes of an accepted bundle for the next start (blocking file I/O)."""
        staged = self.stage(data)
        try:
            self.commit(staged)
        except BaseException:
            self.discard(staged)
            raise

    def stage(self, data: bytes) -> Path | None:
        """The first half of :meth:`persist`, which a node does while it checks the bundle: the
        bytes written and synced to a temporary file in the state dir (blocking file I/O), for
        :meth:`commit` once accepted or :meth:`discard`. None without a state dir."""
        if self._state_dir is None:
            return None
        self._state_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self._state_dir, prefix=".bundle.")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return Path(tmp)

    def commit(self, staged: Path | None) -> None:
        """Make a staged copy the persisted bundle (one rename)."""
        if staged is not None and self._state_dir is not None:
            os.replace(staged, self._state_dir / PERSISTED_NAME)

    @staticmethod
    def discard(staged: Path | None) -> None:
        if staged is not None:
            staged.unlink(missing_ok=True)

    def persisted(self) -> bytes | None:
        """The last good bundle from the state dir, if any (verified again before use)."""
        if self._state_dir is None:
            return None
        try:
            return (self._state_dir / PERSISTED_NAME).read_bytes()
        except OSError:
            return None
