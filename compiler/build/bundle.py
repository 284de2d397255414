"""``gwc build``: choose serial and revision, compile, sign, write the bundle files atomically."""
from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gwc.compiler.build.compile import checked_payload, compile_data
from gwc.compiler.build.registry import Registry
from gwc.runtime.bundle import layout
from gwc.runtime.bundle.envelope import sign_envelope
from gwc.runtime.bundle.format import BundlePayload
from gwc.runtime.bundle.read import digest_of


class BuildError(Exception):
    pass


@dataclass(frozen=True)
class Built:
    payload: BundlePayload
    envelope: bytes
    digest: str
    path: Path
    addressed_path: Path


def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                             timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def default_serial(root: Path) -> int:
    """The commit time of HEAD in seconds: it grows along main, as rollback protection needs.

    Outside git, SOURCE_DATE_EPOCH (the reproducible-builds convention) supplies it.
    """
    ctime = _git(root, "log", "-1", "--format=%ct")
    if ctime and ctime.isdigit():
        return int(ctime)
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "")
    if epoch.isdigit():
        return int(epoch)
    raise BuildError("cannot choose a serial: the registry is not in a git checkout and "
                     "SOURCE_DATE_EPOCH is unset; pass --serial N")


def default_revision(root: Path, inputs: Sequence[str] = (".",)) -> str:
    """The commit hash of HEAD, with "-dirty" when any input (tracked or not) differs from it.

    Only ``inputs`` count, so a key file or a scratch folder in the checkout does not mark the
    bundle dirty, while a new policy file does, even one that .gitignore hides.
    """
    sha = _git(root, "rev-parse", "HEAD")
    if not sha:
        return "unversioned"
    status = _git(root, "status", "--porcelain", "--ignored=matching", "--", *inputs)
    return sha + ("-dirty" if status or status is None else "")  # unknown state counts as dirty


def write_atomically(path: Path, data: bytes) -> None:
    """Readers (a runtime polling a shared folder) see the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def build(registry: Registry, key: Ed25519PrivateKey, out: Path, serial: int | None,
          revision: str | None, encoding: str = "lines") -> Built:
    """Compile, check, sign and write. ``encoding``: ``lines`` (what nodes load fastest) or
    ``json`` (the one-document payload, which nodes older than issue 15 also read); see
    ``gwc.runtime.bundle.layout``."""
    serial = default_serial(registry.root) if serial is None else serial
    if revision is None:
        revision = default_revision(registry.root, registry.input_paths())
    data = compile_data(registry, serial, revision)
    payload = checked_payload(data)
    envelope = sign_envelope(layout.encode(data, encoding), key, layout.ENCODINGS[encoding])
    digest = digest_of(envelope)
    addressed = out / "bundles" / f"{digest.removeprefix('sha256:')}.json"
    write_atomically(addressed, envelope)  # immutable copy first: the pointer never dangles
    write_atomically(out / "bundle.json", envelope)
    return Built(payload, envelope, digest, out / "bundle.json", addressed)
