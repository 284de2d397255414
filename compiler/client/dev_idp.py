"""A development identity provider: one ES256 key, its JWKS, and a token minter.

For demos and tests only: production gateways trust the company IdP. The JWKS file can be named in
gateway.yaml as ``identity.jwks_file`` (it is embedded in the signed bundle) or served over HTTP.
"""
from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

ALGORITHM = "ES256"


class DevIdP:
    def __init__(self, key: ec.EllipticCurvePrivateKey, kid: str) -> None:
        self.key, self.kid = key, kid

    @classmethod
    def generate(cls, kid: str | None = None) -> DevIdP:
        return cls(ec.generate_private_key(ec.SECP256R1()), kid or f"dev-{uuid.uuid4().hex[:8]}")

    @classmethod
    def load(cls, key_path: str | Path) -> DevIdP:
        """Load a key written by :meth:`save` (its kid is stored beside it in PREFIX.jwks.json)."""
        key_path = Path(key_path)
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{key_path} is not an EC private key")
        jwks = json.loads(key_path.with_suffix(".jwks.json").read_text())
        return cls(key, jwks["keys"][0]["kid"])

    def jwks(self) -> dict[str, Any]:
        public = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.key.public_key()))
        return {"keys": [{**public, "kid": self.kid, "alg": ALGORITHM, "use": "sig"}]}

    def save(self, prefix: str | Path) -> tuple[Path, Path]:
        """Write PREFIX.key (PEM, 0600) and PREFIX.jwks.json (public)."""
        key_path, jwks_path = Path(f"{prefix}.key"), Path(f"{prefix}.jwks.json")
        key_path.parent.mkdir(parents=True, exist_ok=True)
        key_path.unlink(missing_ok=True)
        pem = self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption())
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
        jwks_path.write_text(json.dumps(self.jwks(), indent=2) + "\n")
        return key_path, jwks_path

    def token(self, *, issuer: str, audience: str, subject: str, groups: list[str] | None = None,
              ttl_s: int = 3600, actor: str | None = None, groups_claim: str = "groups",
              now: float | None = None, **claims: Any) -> str:
        """A signed access token; ``actor`` makes it an agent's token (RFC 8693 ``act``)."""
        issued = int(now if now is not None else time.time())
        body: dict[str, Any] = {"iss": issuer, "aud": audience, "sub": subject, "iat": issued,
                                "nbf": issued, "exp": issued + ttl_s, "jti": uuid.uuid4().hex,
                                groups_claim: list(groups or []), **claims}
        if actor is not None:
            body["act"] = {"sub": actor}
        return jwt.encode(body, self.key, algorithm=ALGORITHM, headers={"kid": self.kid})
