"""Where a closed trail file lives in an object store: the bucket's key layout, shared by the nodes
that ship files (``gwc.runtime.audit.shipper``) and the offline tools that read them back.

A file's key names its node, its chain and the numbers of its first and last records::

    <prefix>/<node>/<chain>/<first:012d>-<last:012d>.jsonl
    <prefix>/<node>/<chain>/<first:012d>-<last:012d>.head.json   (its signed checkpoint)

``chain`` tells apart two chains of one node name (a node whose disk was lost starts over at
record 1: without it, its first file would collide with one the bucket keeps under Object Lock).
Numbers are zero-padded so that a listing, which S3 returns in key order, is trail order; the
numbers also let a reader name a gap between two shipped files without reading either.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote, unquote

from gwc.runtime.audit.chain import CHAIN_ID

SCHEME = "s3://"
TRAIL_SUFFIX = ".jsonl"
HEAD_SUFFIX = ".head.json"
# A trail key's file name, as a lenient eye reads it (any Unicode digit): one that is not ASCII,
# or whose node is not encoded as the layout encodes it, is an alias of a real file's key.
_NAME = re.compile(r"^(?P<first>\d{12})-(?P<last>\d{12})(?P<suffix>\.jsonl|\.head\.json)$")


class StoreUrlError(ValueError):
    """Not an ``s3://bucket[/prefix]`` URL."""


@dataclass(frozen=True)
class StoreUrl:
    """``s3://bucket/prefix``: the bucket, and the prefix keys go under (no slashes at its ends)."""

    bucket: str
    prefix: str

    @classmethod
    def parse(cls, url: str) -> StoreUrl:
        if not url.startswith(SCHEME):
            raise StoreUrlError(f"{url!r} is not an s3://bucket/prefix URL")
        bucket, _, prefix = url[len(SCHEME):].partition("/")
        if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket):
            raise StoreUrlError(f"{url!r}: {bucket!r} is not an S3 bucket name")
        return cls(bucket, prefix.strip("/"))

    def __str__(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.prefix}" if self.prefix else f"{SCHEME}{self.bucket}"

    def key(self, rest: str) -> str:
        return f"{self.prefix}/{rest}" if self.prefix else rest


@dataclass(frozen=True, order=True)
class TrailObject:
    """One shipped file of a chain: ordering sorts a node's chain into trail order."""

    node: str
    chain: str
    first: int  # the number of its first record, counted from the chain's first (1)
    last: int  # the number of its last record

    def stem(self, store: StoreUrl) -> str:
        return store.key(f"{node_segment(self.node)}/{self.chain}/{self.first:012d}-{self.last:012d}")

    def trail_key(self, store: StoreUrl) -> str:
        return self.stem(store) + TRAIL_SUFFIX

    def head_key(self, store: StoreUrl) -> str:
        return self.stem(store) + HEAD_SUFFIX


def node_segment(node: str) -> str:
    """A node name as one segment of a key: percent-encoded, slashes too; a name made only of
    dots ("." or "..", which a store or a client may resolve as a path) has its dots encoded."""
    if node and node.strip(".") == "":
        return "%2E" * len(node)
    return quote(node, safe="")


def parse_key(store: StoreUrl, key: str, *, canonical: bool = True) -> tuple[TrailObject, str] | None:
    """(the file, ``.jsonl`` or ``.head.json``) a key under ``store`` names; None for any other
    key (a reader lists a prefix and must pass over what is not a trail). Only the one key the
    layout gives a file is read as naming it: ASCII digits, and the node encoded as
    :func:`node_segment` encodes it. ``canonical=False`` also reads the keys that only look like
    it (other digits, another encoding of the node): aliases a reader reports, never reads."""
    rest = key[len(store.prefix) + 1:] if store.prefix else key
    if store.prefix and not key.startswith(store.prefix + "/"):
        return None
    parts = rest.split("/")
    if len(parts) != 3:
        return None
    node, chain, name = parts
    match = _NAME.match(name)
    if match is None or (canonical and not name.isascii()) or not CHAIN_ID.fullmatch(chain):
        return None
    if canonical and node_segment(unquote(node)) != node:
        return None
    first, last = int(match["first"]), int(match["last"])
    if not 1 <= first <= last:
        return None
    return TrailObject(unquote(node), chain, first, last), match["suffix"]
