"""Where bundles come from: a file path or an http(s) URL, fetched with an ETag so that an
unchanged bundle costs one conditional request and no verification work."""
from __future__ import annotations

import asyncio
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import aiohttp

MAX_BUNDLE_BYTES = 256 * 1024 * 1024


class SourceError(Exception):
    """The bundle could not be fetched (unreachable, HTTP error, unreadable file)."""


@dataclass(frozen=True, slots=True)
class Fetched:
    data: bytes
    etag: str | None


class BundleSource(Protocol):
    location: str

    async def fetch(self, etag: str | None) -> Fetched | None:
        """The bundle bytes, or None when unchanged since ``etag``."""
        ...

    async def close(self) -> None: ...


class FileSource:
    """A bundle on a local or mounted file system; the ETag is derived from size and mtime."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.location = str(path)

    def _etag(self) -> str:
        st = os.stat(self.path)
        return f'"{st.st_size:x}-{st.st_mtime_ns:x}"'

    def _read(self, etag: str | None) -> Fetched | None:
        try:
            current = self._etag()
            if current == etag:
                return None
            data = self.path.read_bytes()
        except OSError as exc:
            raise SourceError(f"cannot read {self.path}: {exc.strerror or exc}") from None
        if len(data) > MAX_BUNDLE_BYTES:
            raise SourceError(f"{self.path} is larger than {MAX_BUNDLE_BYTES} bytes")
        return Fetched(data, current)

    async def fetch(self, etag: str | None) -> Fetched | None:
        return await asyncio.to_thread(self._read, etag)

    async def close(self) -> None:
        return None


class HttpSource:
    """A bundle served over HTTP(S), e.g. from an object store; honours ETag / 304."""

    def __init__(self, url: str, timeout_s: float = 30.0) -> None:
        self.location = url
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def fetch(self, etag: str | None) -> Fetched | None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        headers = {"If-None-Match": etag} if etag else {}
        try:
            async with self._session.get(self.location, headers=headers) as resp:
                if resp.status == 304:
                    return None
                if resp.status != 200:
                    raise SourceError(f"GET {self.location}: HTTP {resp.status}")
                if (resp.content_length or 0) > MAX_BUNDLE_BYTES:
                    raise SourceError(f"GET {self.location}: larger than {MAX_BUNDLE_BYTES} bytes")
                data = await resp.content.read(MAX_BUNDLE_BYTES + 1)
                if len(data) > MAX_BUNDLE_BYTES:
                    raise SourceError(f"GET {self.location}: larger than {MAX_BUNDLE_BYTES} bytes")
                # Without a server ETag, a content hash still spares re-verifying the same bytes.
                tag = resp.headers.get("ETag") or f'"{hashlib.sha256(data).hexdigest()}"'
                return None if tag == etag else Fetched(data, tag)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise SourceError(f"GET {self.location}: {exc.__class__.__name__}: {exc}") from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def source_for(location: str) -> BundleSource:
    if location.startswith(("http://", "https://")):
        return HttpSource(location)
    return FileSource(location)
