"""Where ``gwc connect`` and ``gwc login`` keep a user's sign-in to each gateway: the OS keyring
(service ``gwc``, one entry per gateway URL) through the ``keyring`` library, or, on a machine with
no usable keyring backend (a headless server, a container), a JSON file readable by its owner only
(``$XDG_CONFIG_HOME/gwc/sign-ins.json``, else ``~/.config/gwc/sign-ins.json``, mode 0600).

An entry is the gateway's endpoints, the client registration it gave us, and the tokens. Refresh
tokens rotate and a reused one revokes the whole sign-in, so two processes refreshing the same
entry at once would sign the user out: :meth:`TokenStore.locked` is a lock across processes
(a lock file beside the JSON file) that a refresh holds while it reads, refreshes and writes.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import tempfile
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger("gwc.sign_in")
SERVICE = "gwc"  # the keyring service every entry is kept under; the entry's name is the gateway URL
FILE_NAME = "sign-ins.json"
LOCK_NAME = "sign-ins.lock"


@dataclass(frozen=True)
class Credentials:
    """One sign-in to one gateway: what to refresh with, and where."""

    gateway: str  # the base URL the user gave (the store's key)
    issuer: str  # the gateway's authorization server (its public URL)
    token_endpoint: str
    revocation_endpoint: str | None
    resource: str  # what the tokens are for: the gateway itself, so /mcp and /v1/ both take them
    client_id: str  # from dynamic registration, once per gateway
    access_token: str | None = None
    refresh_token: str | None = None
    expires_at: float | None = None  # seconds since the epoch; None: the gateway did not say

    def expiring(self, now: float, margin_s: float) -> bool:
        """The access token is missing or ends within ``margin_s``."""
        if not self.access_token:
            return True
        return self.expires_at is not None and self.expires_at - now <= margin_s

    def without_tokens(self) -> Credentials:
        """The registration alone: what is left after a sign-in ended."""
        return replace(self, access_token=None, refresh_token=None, expires_at=None)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: Any) -> Credentials | None:
        """None for anything that is not a whole entry (a damaged or older file)."""
        if not isinstance(data, dict):
            return None
        names = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in data.items() if k in names})
        except TypeError:
            return None


class TokenStore(Protocol):
    """Entries by gateway URL."""

    @property
    def where(self) -> str:
        """For messages: "the OS keyring", or the file's path."""
        ...

    def load(self, gateway: str) -> Credentials | None: ...

    def save(self, credentials: Credentials) -> None: ...

    def delete(self, gateway: str) -> None: ...

    def locked(self) -> FileLock: ...


def config_dir() -> Path:
    """``$XDG_CONFIG_HOME/gwc`` or ``~/.config/gwc`` (on every OS: one place to document)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "gwc"


class FileLock:
    """An exclusive lock on a file across processes (flock on POSIX, msvcrt on Windows).

    ``acquire`` blocks: async code calls it through ``asyncio.to_thread``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if sys.platform == "win32":
                import msvcrt
                msvcrt.locking(fd, msvcrt.LK_LOCK, 1)
            else:
                import fcntl
                fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases either kind of lock
            self._fd = None

    def __enter__(self) -> None:
        self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class FileStore:
    """Every gateway's entry in one JSON file, 0600 in a 0700 folder, replaced atomically."""

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = folder or config_dir()
        self.path = self.folder / FILE_NAME
        self.where = str(self.path)

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("sign-in file unreadable; starting afresh", extra={"path": str(self.path),
                                                                            "reason": str(exc)})
            return {}
        gateways = data.get("gateways") if isinstance(data, dict) else None
        return gateways if isinstance(gateways, dict) else {}

    def _write(self, gateways: dict[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, temporary = tempfile.mkstemp(prefix=".sign-ins.", dir=self.folder)  # created 0600
        try:
            with os.fdopen(fd, "w") as out:
                json.dump({"version": 1, "gateways": gateways}, out, indent=1)
            os.chmod(temporary, 0o600)
            os.replace(temporary, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise

    def load(self, gateway: str) -> Credentials | None:
        return Credentials.from_dict(self._read().get(gateway))

    def save(self, credentials: Credentials) -> None:
        gateways = self._read()
        gateways[credentials.gateway] = asdict(credentials)
        self._write(gateways)

    def delete(self, gateway: str) -> None:
        gateways = self._read()
        if gateways.pop(gateway, None) is not None:
            self._write(gateways)

    def locked(self) -> FileLock:
        return FileLock(self.folder / LOCK_NAME)


class KeyringStore:
    """One keyring entry per gateway: service ``gwc``, the URL as its name, the entry as JSON."""

    where = "the OS keyring"

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = folder or config_dir()  # only for the lock file

    def load(self, gateway: str) -> Credentials | None:
        import keyring

        secret = keyring.get_password(SERVICE, gateway)
        if secret is None:
            return None
        try:
            return Credentials.from_dict(json.loads(secret))
        except ValueError:
            return None

    def save(self, credentials: Credentials) -> None:
        import keyring

        keyring.set_password(SERVICE, credentials.gateway, credentials.to_json())

    def delete(self, gateway: str) -> None:
        import keyring
        from keyring.errors import PasswordDeleteError

        with contextlib.suppress(PasswordDeleteError):
            keyring.delete_password(SERVICE, gateway)

    def locked(self) -> FileLock:
        return FileLock(self.folder / LOCK_NAME)


def usable_keyring() -> bool:
    """A real backend is configured (not keyring's ``fail`` or ``null`` stand-ins)."""
    try:
        import keyring
        from keyring.backends import chainer, fail, null
    except ImportError:  # pragma: no cover - keyring is a dependency
        return False
    backend = keyring.get_keyring()
    if isinstance(backend, (fail.Keyring, null.Keyring)):
        return False
    if isinstance(backend, chainer.ChainerBackend):
        return bool(backend.backends)
    return True


class FallbackStore:
    """The keyring while it works; the file once it fails (a locked or broken backend), with a
    warning on stderr that names the file."""

    def __init__(self, folder: Path | None = None) -> None:
        self._file = FileStore(folder)
        self._keyring: KeyringStore | None = KeyringStore(folder) if usable_keyring() else None

    @property
    def where(self) -> str:
        return self._keyring.where if self._keyring is not None else self._file.where

    def _fall_back(self, exc: Exception) -> FileStore:
        log.warning(f"the OS keyring failed ({type(exc).__name__}: {exc}); keeping sign-ins in "
                    f"{self._file.where} instead")
        self._keyring = None
        return self._file

    def load(self, gateway: str) -> Credentials | None:
        if self._keyring is not None:
            try:
                return self._keyring.load(gateway)
            except Exception as exc:  # keyring backends raise their own errors (D-Bus, OSError...)
                return self._fall_back(exc).load(gateway)
        return self._file.load(gateway)

    def save(self, credentials: Credentials) -> None:
        if self._keyring is not None:
            try:
                return self._keyring.save(credentials)
            except Exception as exc:
                self._fall_back(exc)
        self._file.save(credentials)

    def delete(self, gateway: str) -> None:
        if self._keyring is not None:
            try:
                self._keyring.delete(gateway)
            except Exception as exc:
                self._fall_back(exc)
        self._file.delete(gateway)  # a file entry from an earlier fallback goes too

    def locked(self) -> FileLock:
        return self._file.locked()


def open_store() -> TokenStore:
    """The keyring if one is usable, else the 0600 file."""
    return FallbackStore()
