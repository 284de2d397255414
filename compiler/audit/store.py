"""Reading shipped trail files back from an object store (``s3://bucket/prefix``) for the offline
tools, one object at a time.

A listing of the prefix's object versions (ListObjectVersions) is grouped into chains (node,
chain), each in key order, which is trail order (``gwc.runtime.audit.objects``). Object Lock
protects versions, not keys: anyone allowed s3:PutObject can put a newer version at a key, so each
key is read at its OLDEST version (the one its node wrote, with If-None-Match), by its VersionId,
and a key with more than one version is a finding of its chain (as is a key that only looks like
the layout's, an alias of a file's key, and an object written while the bucket had no versioning:
nothing protects it). A delete marker (what a lifecycle rule's expiration leaves) is a note: it
hides nothing from a reader of versions, and a key left with markers alone is a file gone.

An object is read as a stream, never held whole nor written to disk: :class:`StoreObject` opens
like a file (``open("rb")``) and names itself ``s3://bucket/key``, so the readers of files
(``TrailReader``, ``chain.verify``) read objects as they read files, and their findings name the
object.

boto3 is imported only here, and only when a store is read: a command given files alone never
loads it. Credentials, region and endpoint come from boto3's default chain (``AWS_*`` variables,
``~/.aws``, a role), as for any AWS tool; ``AWS_ENDPOINT_URL_S3`` points it at another
S3-compatible store.
"""
from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Literal

from gwc.runtime.audit.objects import HEAD_SUFFIX, TRAIL_SUFFIX, StoreUrl, TrailObject, parse_key

READ_BUFFER = 1 << 20  # bytes asked of the connection at a time


class StoreError(Exception):
    """A store that cannot be read as a whole (no such bucket, no credentials, unreachable, not
    listable, nothing in it); the message names it and says why."""


_clients: dict[int, Any] = {}  # by process id: a client is not shared across a fork


def _client() -> Any:
    client = _clients.get(os.getpid())
    if client is None:
        import boto3  # type: ignore[import-untyped]

        # A session of its own: the default one keeps the credentials it found first.
        client = _clients[os.getpid()] = boto3.session.Session().client("s3")
    return client


def _why(exc: Exception) -> str:
    """What went wrong talking to the store, in a sentence."""
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError  # type: ignore[import-untyped]

    if isinstance(exc, NoCredentialsError):
        return ("no AWS credentials found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or "
                "AWS_PROFILE, or run with a role)")
    if isinstance(exc, EndpointConnectionError):
        from urllib.parse import urlsplit

        where = urlsplit(str(exc.kwargs.get("endpoint_url")))
        return f"cannot reach the store at {where.scheme}://{where.netloc}"
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code, message = error.get("Code", "?"), error.get("Message", "")
        if code == "NoSuchBucket":
            return "no such bucket"
        if code in ("AccessDenied", "403"):
            return f"access denied ({message or code})"
        return f"{code}: {message}" if message else str(code)
    return str(exc) or type(exc).__name__


@dataclass(frozen=True)
class StoreObject:
    """One object, read as a stream. Picklable (replay's worker processes open objects
    themselves, each with its own client)."""

    bucket: str
    key: str
    size: int
    version: str | None = None  # the version read (the key's oldest); None: the latest

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    def open(self, mode: Literal["rb"] = "rb") -> BinaryIO:
        """A buffered binary stream of the object (lines, ``read(n)``); OSError naming the object
        when it cannot be read."""
        from botocore.exceptions import BotoCoreError, ClientError  # type: ignore[import-untyped]

        try:
            extra = {"VersionId": self.version} if self.version is not None else {}
            body = _client().get_object(Bucket=self.bucket, Key=self.key, **extra)["Body"]
        except (BotoCoreError, ClientError) as exc:
            raise OSError(None, _why(exc), str(self)) from None
        return io.BufferedReader(_Body(body, str(self)), READ_BUFFER)

    def read_bytes(self) -> bytes:
        with self.open() as fh:
            return fh.read()


class _Body(io.RawIOBase):
    """An object's response body as a raw stream; a connection that fails mid-object is an
    OSError naming it (the readers of files handle those)."""

    def __init__(self, body: Any, name: str) -> None:
        self._body, self.name = body, name

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        from botocore.exceptions import BotoCoreError  # type: ignore[import-untyped]

        try:
            data = self._body.read(len(buffer))
        except (BotoCoreError, OSError) as exc:
            raise OSError(None, f"reading failed: {exc}", self.name) from None
        buffer[:len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()


@dataclass
class Shipped:
    """One shipped file of a chain: its trail object and its head object, either possibly missing
    (each is a finding for verify)."""

    object: TrailObject
    trail: StoreObject | None = None
    head: StoreObject | None = None


@dataclass
class Chain:
    """The shipped files of one (node, chain) under a store URL, in trail order."""

    store: StoreUrl
    node: str
    chain: str
    files: list[Shipped] = field(default_factory=list)
    newest: str = ""  # the latest LastModified of its objects (ISO), to tell a node's chains apart
    findings: list[str] = field(default_factory=list)  # what its keys' versions say (tampered)
    notes: list[str] = field(default_factory=list)  # delete markers: no finding, said

    @property
    def label(self) -> str:
        return f"{self.node} (chain {self.chain} in {self.store})"

    def trail_objects(self) -> list[StoreObject]:
        return [shipped.trail for shipped in self.files if shipped.trail is not None]


@dataclass
class _Key:
    """One key's versions (in listing order: newest first) and delete markers."""

    versions: list[dict[str, Any]] = field(default_factory=list)
    markers: list[dict[str, Any]] = field(default_factory=list)


def _when(entry: dict[str, Any]) -> str:
    modified = entry.get("LastModified")
    return modified.isoformat() if modified is not None else "?"


def _listing(store: StoreUrl) -> dict[str, _Key]:
    """Every key under the store URL's prefix, with its versions and delete markers."""
    keys: dict[str, _Key] = {}
    pages = _client().get_paginator("list_object_versions").paginate(
        Bucket=store.bucket, Prefix=store.key(""))
    for page in pages:
        for entry in page.get("Versions", ()):
            keys.setdefault(entry["Key"], _Key()).versions.append(entry)
        for entry in page.get("DeleteMarkers", ()):
            keys.setdefault(entry["Key"], _Key()).markers.append(entry)
    return keys


def _oldest(versions: list[dict[str, Any]]) -> dict[str, Any]:
    """The key's first version: the oldest date, and among equal dates the last listed (S3
    lists a key's versions newest first)."""
    return min(enumerate(versions),
               key=lambda pair: (_when(pair[1]), -pair[0]))[1]


def chains(store: StoreUrl) -> list[Chain]:
    """Every chain under the store URL (keys the layout does not name are passed over, but keys
    that only look like it are findings), sorted by node and chain, each in trail order. Each key
    is read at its oldest version; its other versions and delete markers are findings of its
    chain. StoreError when the store cannot be listed or holds no trail object."""
    from botocore.exceptions import BotoCoreError, ClientError  # type: ignore[import-untyped]

    found: dict[tuple[str, str], dict[TrailObject, Shipped]] = {}
    newest: dict[tuple[str, str], str] = {}
    findings: dict[tuple[str, str], list[str]] = {}
    notes: dict[tuple[str, str], list[str]] = {}
    try:
        listing = _listing(store)
    except (BotoCoreError, ClientError) as exc:
        raise StoreError(f"{store}: cannot list it: {_why(exc)}") from None
    for key in sorted(listing):
        versions = listing[key]
        url = f"s3://{store.bucket}/{key}"
        parsed = parse_key(store, key)
        if parsed is None:
            alias = parse_key(store, key, canonical=False)
            if alias is not None:
                shipped_file = alias[0]
                real = shipped_file.stem(store) + alias[1]
                findings.setdefault((shipped_file.node, shipped_file.chain), []).append(
                    f"{url} is not the key of a shipped file but an alias of "
                    f"s3://{store.bucket}/{real} (other digits, or another encoding of the "
                    "node): a node never writes it, so it was put there; not read")
                found.setdefault((shipped_file.node, shipped_file.chain), {})
            continue
        shipped_file, suffix = parsed
        ident = (shipped_file.node, shipped_file.chain)
        described = ", ".join(
            [f"version {v.get('VersionId')} of {_when(v)}" for v in versions.versions]
            + [f"delete marker {m.get('VersionId')} of {_when(m)}" for m in versions.markers])
        if len(versions.versions) <= 1 and versions.markers:
            # A lifecycle rule's expiration puts a delete marker over a key (a node cannot: it
            # has no s3:DeleteObject); it hides nothing from a reader of versions.
            notes.setdefault(ident, []).append(
                f"{url}: {described}: deleted (a lifecycle rule's expiration, or s3:DeleteObject)"
                + ("; its version is still read" if versions.versions else
                   "; no version left, read as gone"))
        if not versions.versions:
            continue  # delete markers alone: the file is gone, as if never listed
        mine = findings.setdefault(ident, [])
        shipped = found.setdefault(ident, {}).setdefault(shipped_file, Shipped(shipped_file))
        for entry in (*versions.versions, *versions.markers):
            newest[ident] = max(newest.get(ident, ""), _when(entry))
        if len(versions.versions) > 1:
            mine.append(f"{url} has {len(versions.versions)} version(s) and "
                        f"{len(versions.markers)} delete marker(s) ({described}): a node writes a "
                        "key once, so something else wrote it again; its first version is read")
        oldest = _oldest(versions.versions)
        version = oldest.get("VersionId")
        if version in (None, "null"):
            mine.append(f"{url} has no version id: it was written while the bucket's versioning "
                        "was off or suspended, so no Object Lock protects it and a rewrite "
                        "leaves no trace")
            version = None
        if (suffix == TRAIL_SUFFIX and shipped.trail is not None) or \
                (suffix == HEAD_SUFFIX and shipped.head is not None):
            mine.append(f"{url} names the same file as another key: it was put there")
            continue
        stored = StoreObject(store.bucket, key, int(oldest.get("Size", 0)), version)
        if suffix == TRAIL_SUFFIX:
            shipped.trail = stored
        else:
            shipped.head = stored
    if not any(shipped.trail is not None for files in found.values() for shipped in files.values()) \
            and not any(findings.values()):
        raise StoreError(f"{store}: no trail files in it (keys <prefix>/<node>/<chain>/"
                         "<first>-<last>.jsonl)")
    return [Chain(store, node, chain, [files[k] for k in sorted(files)],
                  newest.get((node, chain), ""), findings.get((node, chain), []),
                  notes.get((node, chain), []))
            for (node, chain), files in sorted(found.items())]


def trail_objects(stores: Iterable[StoreUrl],
                  warn: Callable[[str], None] | None = None) -> list[StoreObject]:
    """The trail objects of every chain of the stores (each store once), in trail order per
    chain, each at its oldest version; what query and replay read. Each chain's findings (other
    versions, aliases) go to ``warn``."""
    out: list[StoreObject] = []
    for store in dict.fromkeys(stores):
        for chain in chains(store):
            if warn is not None:
                for finding in chain.findings:
                    warn(finding)
            out.extend(chain.trail_objects())
    return out
