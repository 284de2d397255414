"""Who can log in at ``gwc dev-idp serve`` and which OAuth clients it knows.

Read by the CLI before the server starts (no aiohttp here), so a bad users or clients file fails as a
usage error instead of at the first login.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter, field_validator

NonEmpty = Annotated[str, StringConstraints(min_length=1)]


class DevUser(BaseModel):
    """A development user; with ``agent`` set, the tokens are that agent's, acting for ``sub``."""
    model_config = ConfigDict(frozen=True, extra="forbid")
    sub: NonEmpty
    groups: tuple[NonEmpty, ...] = ()
    agent: NonEmpty | None = None

    @property
    def login(self) -> str:
        """What the login page's button sends: a user and an agent acting for them are two logins."""
        return self.sub if self.agent is None else f"{self.agent} for {self.sub}"


class DevClient(BaseModel):
    """An OAuth client; without ``client_secret`` it is a public client (PKCE is required of all)."""
    model_config = ConfigDict(frozen=True, extra="forbid")
    client_id: NonEmpty
    client_secret: NonEmpty | None = None
    redirect_uris: tuple[NonEmpty, ...] = Field(min_length=1)

    @field_validator("redirect_uris")
    @classmethod
    def _absolute(cls, uris: tuple[str, ...]) -> tuple[str, ...]:
        for uri in uris:  # RFC 6749 §3.1.2: absolute, no fragment
            if "://" not in uri or "#" in uri:
                raise ValueError(f"{uri!r} is not an absolute URI without a fragment")
        return uris


# What `make demo` has minted tokens for (demo/run.py): its policies name these users and groups.
DEFAULT_USERS = (
    DevUser(sub="alice", groups=("data-platform",)),
    DevUser(sub="bob", groups=("engineering",)),
    DevUser(sub="carol", groups=("success",)),
    DevUser(sub="dave", groups=("platform",)),
    DevUser(sub="sam", groups=("sre", "sre-oncall")),
)

_USERS = TypeAdapter(dict[str, tuple[DevUser, ...]])
_CLIENTS = TypeAdapter(dict[str, tuple[DevClient, ...]])


def load_users(path: Path) -> tuple[DevUser, ...]:
    """``users: [{sub, groups, agent}]`` from a YAML or JSON file (JSON is YAML)."""
    users = _USERS.validate_python(yaml.safe_load(path.read_text())).get("users", ())
    if not users or len({user.login for user in users}) != len(users):
        raise ValueError(f"{path}: users must be a non-empty list, each sub (and agent) once")
    return users


def load_clients(path: Path) -> tuple[DevClient, ...]:
    """``clients: [{client_id, client_secret, redirect_uris}]`` from a YAML or JSON file."""
    return _CLIENTS.validate_python(yaml.safe_load(path.read_text())).get("clients", ())


def parse_client(spec: str) -> DevClient:
    """``ID:SECRET:REDIRECT_URI`` (an empty SECRET makes a public client); the URI keeps its colons."""
    client_id, secret, redirect_uri = [*spec.split(":", 2), "", ""][:3]
    return DevClient(client_id=client_id, client_secret=secret or None, redirect_uris=(redirect_uri,))
