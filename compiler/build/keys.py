"""Ed25519 signing keys for bundles: generation and loading."""
from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gwc.runtime.bundle.keys import KeyFileError, load_private_key

__all__ = ["KeyFileError", "generate_keypair", "load_private_key"]


def generate_keypair(prefix: str | Path, force: bool = False) -> tuple[Path, Path, Ed25519PrivateKey]:
    """Write ``PREFIX.key`` (PKCS#8 PEM, mode 0600) and ``PREFIX.pub`` (SPKI PEM)."""
    key_path, pub_path = Path(f"{prefix}.key"), Path(f"{prefix}.pub")
    if not force and (key_path.exists() or pub_path.exists()):
        raise KeyFileError(f"{key_path} or {pub_path} exists; pass --force to overwrite")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    key_path.parent.mkdir(parents=True, exist_ok=True)
    key_path.unlink(missing_ok=True)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    pub_path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                        serialization.PublicFormat.SubjectPublicKeyInfo))
    return key_path, pub_path, key
