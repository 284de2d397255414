"""A payload's two encodings, told apart by the envelope's ``payloadType``.

- ``application/vnd.gwc.bundle+json``: one canonical JSON document (every bundle built before
  issue 15, and ``gwc build --encoding json``).
- ``application/vnd.gwc.bundle+jsonl``: the same document as canonical JSON lines, what
  ``gwc build`` writes. The first line is the **header**: the document without its servers and
  rules, where ``servers`` is the list of server names in order and ``rules`` the number of
  rules. Then one line per server (its compiled JSON, in the header's order) and one line per
  rule (in order). Every line ends in ``\\n``; canonical JSON never has a raw newline, so the
  lines are found without parsing.

Both decode to the same :class:`~gwc.runtime.bundle.format.BundlePayload`. With lines, a node
recognizes a server or rule it validated before by its bytes alone, and parses and validates the
others one small piece at a time (``gwc.runtime.bundle.read``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import orjson

from gwc.runtime.bundle.canonical import canonical_json
from gwc.runtime.bundle.envelope import BUNDLE_LINES_TYPE, BUNDLE_PAYLOAD_TYPE

ENCODINGS = {"json": BUNDLE_PAYLOAD_TYPE, "lines": BUNDLE_LINES_TYPE}


class LayoutError(ValueError):
    """The lines are not laid out as the header says; the message says how."""


def encode(doc: dict[str, Any], encoding: str = "lines") -> bytes:
    """The payload bytes of ``doc`` (the compiled document) in ``encoding``; deterministic."""
    if encoding == "json":
        return canonical_json(doc)
    if encoding != "lines":
        raise ValueError(f"unknown payload encoding {encoding!r}")
    header = {key: value for key, value in doc.items() if key not in ("servers", "rules")}
    header["servers"] = list(doc["servers"])
    header["rules"] = len(doc["rules"])
    return b"".join(canonical_json(part) + b"\n"
                    for part in (header, *doc["servers"].values(), *doc["rules"]))


@dataclass(frozen=True, slots=True)
class Lines:
    """A lines payload cut up: the header (parsed), and each server's and rule's line (not)."""

    header: dict[str, Any]
    names: list[str]
    servers: list[bytes]
    rules: list[bytes]


def split(payload: bytes) -> Lines:
    """Cut a lines payload into its header and pieces, checking the layout (not the content)."""
    if not payload.endswith(b"\n"):
        raise LayoutError("the last line does not end in a newline (truncated?)")
    lines = payload.split(b"\n")
    lines.pop()
    try:  # the standard library's parser, as the header is small: any integer, as in a document
        header = json.loads(lines[0])
    except (UnicodeDecodeError, ValueError):
        raise LayoutError("the header line is not JSON") from None
    if not isinstance(header, dict):
        raise LayoutError("the header line is not a JSON object")
    names, count = header.get("servers"), header.get("rules")
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise LayoutError("the header's servers is not a list of server names")
    if len(set(names)) != len(names):
        raise LayoutError("the header names a server twice")
    if type(count) is not int or count < 0:
        raise LayoutError("the header's rules is not the number of rules")
    if len(lines) != 1 + len(names) + count:
        raise LayoutError(f"the header announces {len(names)} server(s) and {count} rule(s), "
                          f"{len(lines) - 1} line(s) follow it")
    return Lines(header, names, lines[1:1 + len(names)], lines[1 + len(names):])


def document(payload_type: str, payload: bytes) -> Any:
    """The payload as the one JSON document it encodes (plain data, not validated): for tools
    and tests that read fields of a bundle. Raises ``ValueError`` if it is not laid out right."""
    if payload_type == BUNDLE_PAYLOAD_TYPE:
        return json.loads(payload)
    if payload_type != BUNDLE_LINES_TYPE:
        raise ValueError(f"unknown payloadType {payload_type!r}")
    lines = split(payload)
    return {**lines.header,
            "servers": {name: orjson.loads(line) for name, line in zip(lines.names, lines.servers,
                                                                         strict=True)},
            "rules": [orjson.loads(line) for line in lines.rules]}


def as_document_json(lines: Lines) -> bytes:
    """The JSON document the lines encode, with their bytes as they are (each line must be one
    JSON value: the caller checks): what a lines payload is validated as in one go."""
    def text(value: object) -> bytes:
        return json.dumps(value).encode("ascii")  # \u escapes: any string, lone surrogates too

    members = []
    for key, value in lines.header.items():
        if key == "servers":
            members.append(b'"servers":{' + b",".join(
                text(name) + b":" + line
                for name, line in zip(lines.names, lines.servers, strict=True)) + b"}")
        elif key == "rules":
            members.append(b'"rules":[' + b",".join(lines.rules) + b"]")
        else:
            members.append(text(key) + b":" + text(value))
    return b"{" + b",".join(members) + b"}"
