"""Payloads as JSON lines (gwc.runtime.bundle.layout): what gwc build writes, how a reader checks
their layout, and that bundles with the payload as one JSON document still load; the envelope's
base64 decoded in chunks."""
from __future__ import annotations

import base64
import binascii
import copy
import json
import re
from typing import Any

import pytest

from gwc.compiler.build.bundle import build
from gwc.compiler.build.compile import checked_payload, compile_data
from gwc.compiler.build.registry import load_registry
from gwc.runtime.bundle import layout
from gwc.runtime.bundle.canonical import canonical_json
from gwc.runtime.bundle.envelope import (
    BUNDLE_LINES_TYPE,
    BUNDLE_PAYLOAD_TYPE,
    VerificationError,
    b64decode_strict,
    verify_envelope,
)
from gwc.runtime.bundle.read import BundleError, load_bundle, parse_payload, trusted_keys

Doc = dict[str, Any]



def test_lines_are_a_header_then_a_line_per_server_and_rule(doc):
    payload = layout.encode(doc)
    lines = payload.split(b"\n")
    assert lines.pop() == b""
    header = json.loads(lines[0])
    assert header["servers"] == list(doc["servers"]) and header["rules"] == len(doc["rules"])
    assert {k: v for k, v in header.items() if k not in ("servers", "rules")} == {
        k: v for k, v in doc.items() if k not in ("servers", "rules")}
    assert lines[1:] == [canonical_json(part) for part in (*doc["servers"].values(), *doc["rules"])]
    assert layout.document(BUNDLE_LINES_TYPE, payload) == doc
    assert parse_payload(payload, BUNDLE_LINES_TYPE) == checked_payload(doc)


def test_build_writes_lines_by_default_and_the_one_document_on_request(example_root, signing_key,
                                                                       tmp_path):
    registry = load_registry(example_root)
    trusted = trusted_keys([str(signing_key[1])])
    lines = build(registry, signing_key[2], tmp_path / "a", 5, "r")
    document = build(registry, signing_key[2], tmp_path / "b", 5, "r", encoding="json")
    data = compile_data(registry, 5, "r")
    for built, payload_type, payload in ((lines, BUNDLE_LINES_TYPE, layout.encode(data)),
                                         (document, BUNDLE_PAYLOAD_TYPE, canonical_json(data))):
        env = json.loads(built.envelope)
        assert env["payloadType"] == payload_type
        assert base64.b64decode(env["payload"]) == payload
        assert load_bundle(built.envelope, trusted).payload == built.payload
    assert lines.digest != document.digest  # two encodings, two content addresses
    # A reader that knows only the one-document type (every node before issue 15) refuses lines
    # by their type, before reading any of the payload.
    with pytest.raises(VerificationError, match="unexpected payloadType 'application/vnd.gwc.bundle"
                                                r"\+jsonl' \(expected 'application/vnd.gwc.bundle"
                                                r"\+json'\)"):
        verify_envelope(lines.envelope, trusted, BUNDLE_PAYLOAD_TYPE)


def _header(d: Doc, **changes: Any) -> bytes:
    header = {k: v for k, v in d.items() if k not in ("servers", "rules")}
    header |= {"servers": list(d["servers"]), "rules": len(d["rules"])}
    return canonical_json(header | changes) + b"\n"


def _body(d: Doc) -> bytes:
    return b"".join(canonical_json(p) + b"\n" for p in (*d["servers"].values(), *d["rules"]))


LAYOUT_ERRORS = {
    "no final newline": (lambda d: layout.encode(d)[:-1], "the last line does not end in a newline"),
    "empty": (lambda d: b"", "the last line does not end in a newline"),
    "header not json": (lambda d: b"{\n" + _body(d), "the header line is not JSON"),
    "header a list": (lambda d: b"[]\n", "the header line is not a JSON object"),
    "servers missing": (lambda d: _header(d, servers=None) + _body(d),
                        "the header's servers is not a list of server names"),
    "server name a number": (lambda d: _header(d, servers=[1, *list(d["servers"])[1:]]) + _body(d),
                             "the header's servers is not a list of server names"),
    "server named twice": (lambda d: _header(d, servers=[*list(d["servers"])[:-1], "deploy"])
                           + _body(d), "the header names a server twice"),
    "rules a bool": (lambda d: _header(d, rules=True) + _body(d),
                     "the header's rules is not the number of rules"),
    "rules negative": (lambda d: _header(d, rules=-1) + _body(d),
                       "the header's rules is not the number of rules"),
    "a line too many": (lambda d: layout.encode(d) + b"{}\n",
                        "the header announces 5 server(s) and 13 rule(s), 19 line(s) follow it"),
    "a line missing": (lambda d: layout.encode(d).rsplit(b"\n", 2)[0] + b"\n",
                       "the header announces 5 server(s) and 13 rule(s), 17 line(s) follow it"),
}


@pytest.mark.parametrize("case", LAYOUT_ERRORS.values(), ids=LAYOUT_ERRORS.keys())
def test_a_lines_payload_out_of_layout_is_refused(doc, case):
    make, message = case
    with pytest.raises(BundleError, match="^" + re.escape(f"malformed payload: {message}")):
        parse_payload(make(doc), BUNDLE_LINES_TYPE)


def test_a_line_that_is_not_one_json_value_is_refused_not_spliced(doc):
    """A server line that would add a server if it were pasted into the document as text."""
    names = list(doc["servers"])
    last = canonical_json(doc["servers"][names[-1]])
    injected = last + b',"intruder":' + last
    payload = layout.encode(doc).replace(last + b"\n", injected + b"\n", 1)
    assert payload != layout.encode(doc)
    message = f"malformed payload: servers.{names[-1]}: not JSON"
    with pytest.raises(BundleError, match="^" + re.escape(message)):
        parse_payload(payload, BUNDLE_LINES_TYPE)
    rules = layout.encode(doc).replace(b'"id":', b'"id" ', 1)
    with pytest.raises(BundleError, match=r"^malformed payload: rules\.0: not JSON"):
        parse_payload(rules, BUNDLE_LINES_TYPE)


def test_lines_refusals_name_the_field_as_in_the_document(doc):
    broken = copy.deepcopy(doc)
    broken["servers"]["deploy"]["tools"]["deploy"]["access"] = "admin"
    broken["rules"][2]["effect"] = "maybe"
    with pytest.raises(BundleError) as by_document:
        parse_payload(layout.encode(broken, "json"))
    with pytest.raises(BundleError) as by_lines:
        parse_payload(layout.encode(broken), BUNDLE_LINES_TYPE)
    assert str(by_lines.value) == str(by_document.value)
    assert str(by_lines.value).startswith("malformed payload: servers.deploy.tools.deploy.access: ")
    assert str(by_lines.value).endswith("(2 problem(s))")


def test_integers_beyond_64_bits_read_as_in_the_document(doc):
    big = copy.deepcopy(doc)
    big["serial"] = 2 ** 70
    big["servers"]["deploy"]["timeout_ms"] = 2 ** 70
    payload = layout.encode(big)
    assert parse_payload(payload, BUNDLE_LINES_TYPE) == parse_payload(layout.encode(big, "json"))


B64_CASES = ["", "QQ==", "QUI=", "QUJD", "QUJDRA==", "QUJDREVG", "QUJDREVGR0g=", "QUJDREVGR0hJ",
             "QQ==QUJD", "QUJDRA==QUJD", "QUJD====", "=QUJD", "QUJDR", "QUJDRE", "QUJDRE=",
             "QUJD\nREVG", "QUJD REVG", "QUJD*EVG", "QUJDRÉVG", "QUJDREVGR0hJSktM", "QUJDREVGR0hJSk=M",
             "QUJD=", "QUJDREVG====", "QUJDRA=======", "QUJD====QUJD", "QQ=", "QUJDREVGR0g==",
             "====", "QUJDREVG=QUJD", "QUJDREVGR0hJ\n", "QR==", "QUI-", "QUI_", "QUJDRA=\x00"]
# Padding after a complete group: RFC 4648 refuses it, and so do nodes, whatever the Python
# (the standard library takes it on 3.11 and refuses it in later versions).
EXCESS_PADDING = {"QUJD====", "QUJD=", "QUJDREVG===="}


@pytest.mark.parametrize("text", B64_CASES)
def test_base64_decodes_and_refuses_as_a_strict_decode(text):
    try:
        expected: bytes | None = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        expected = None
    if text in EXCESS_PADDING:
        expected = None
    try:
        got: bytes | None = b64decode_strict(text)
    except (binascii.Error, ValueError):
        got = None
    assert got == expected
    if text.isascii():
        assert _decoded_or_none(memoryview(text.encode())) == expected  # as the file's bytes


def _decoded_or_none(raw: memoryview) -> bytes | None:
    try:
        return b64decode_strict(raw)
    except (binascii.Error, ValueError):
        return None


def test_a_big_payload_is_decoded_to_the_same_bytes(doc, signing_key):
    doc["servers"] = {f"s{i}": doc["servers"]["deploy"] for i in range(400)}
    payload = layout.encode(doc)
    text = base64.b64encode(payload).decode()
    assert b64decode_strict(text) == payload
    middle = len(text) // 8 * 4
    with pytest.raises(binascii.Error):  # padding in the middle, data after it
        b64decode_strict(text[:middle - 2] + "==" + text[middle:])


def _open_by_parsing(data: bytes) -> tuple[str, bytes, list] | str:
    """What open_envelope gave before it read canonical envelopes without parsing their payload:
    the oracle (its result, or its refusal's message)."""
    try:
        env = json.loads(data)
    except (UnicodeDecodeError, ValueError):
        return "malformed envelope: not JSON (truncated or corrupted file?)"
    if not isinstance(env, dict):
        return "malformed envelope: not a JSON object"
    if not isinstance(env.get("payloadType"), str):
        return "malformed envelope: missing payloadType"
    if not isinstance(env.get("payload"), str):
        return "malformed envelope: payload is not a base64 string"
    try:
        payload = base64.b64decode(env["payload"], validate=True)
    except (binascii.Error, ValueError):
        return "malformed envelope: payload is not valid base64"
    sigs = env.get("signatures")
    if not isinstance(sigs, list) or not sigs or not all(isinstance(s, dict) for s in sigs):
        return "unsigned bundle: the envelope has no signatures"
    return env["payloadType"], payload, sigs


SIG = '[{"keyid":"ab","sig":"c2ln"}]'


def _env(payload: str = '"QUJD"', payload_type: str = '"t"', then: str = "",
         end: str = ',"signatures":' + SIG + "}") -> str:
    return '{"payload":' + payload + ',"payloadType":' + payload_type + then + end


ENVELOPES = {
    "canonical": _env(),
    "canonical padded": _env('"QUI="'),
    "empty payload": _env('""'),
    "escaped payload": _env('"QUJ\\u0044"'),
    "escape elsewhere": _env(payload_type='"\\u0074"'),
    "payload twice": _env(then=',"payload":"REVG"'),
    "payload twice, empty": _env(then=',"payload":""'),
    "payload as a value": _env(payload_type='"payload"'),
    "type first": '{"payloadType":"t","payload":"QUJD","signatures":' + SIG + "}",
    "spaces": '{"payload": "QUJD", "payloadType": "t", "signatures": ' + SIG + "}",
    "control character": _env('"QU\nJD"'),
    "not base64": _env('"QU*D"'),
    "non-ascii": _env('"QUJÉ"'),
    "unterminated": '{"payload":"QUJD',
    "truncated": '{"payload":"QUJD","payloadType":"t","signatures":[{"keyid":"ab"',
    "trailing data": _env(end=',"signatures":' + SIG + "} x"),
    "no type": '{"payload":"QUJD","signatures":' + SIG + "}",
    "no signatures": _env(end="}"),
    "payload a number": _env("5"),
    "a list": '["payload"]',
}


@pytest.mark.parametrize("text", ENVELOPES.values(), ids=ENVELOPES.keys())
def test_a_canonical_envelope_read_without_parsing_its_payload_opens_as_parsed(text):
    from gwc.runtime.bundle.envelope import open_envelope
    data = text.encode()
    expected = _open_by_parsing(data)
    try:
        got: tuple[str, bytes, list] | str = open_envelope(data)
    except VerificationError as exc:
        got = str(exc)
    assert got == expected


def test_a_built_envelope_is_read_without_parsing_its_payload(example_root, signing_key, tmp_path):
    from gwc.runtime.bundle.envelope import _canonical_parts, open_envelope
    built = build(load_registry(example_root), signing_key[2], tmp_path / "out", 1, "r")
    parts = _canonical_parts(built.envelope)
    assert parts is not None
    env, payload = parts
    assert env == {**json.loads(built.envelope), "payload": ""}
    assert open_envelope(built.envelope) == (env["payloadType"], payload, env["signatures"])
    assert payload == base64.b64decode(json.loads(built.envelope)["payload"])
