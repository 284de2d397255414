"""Which hosts count as this machine: loopback only. The rule for upstream URLs that may be plain
http in manifests, for the gateway URL the client commands send a token to over http, and for where
the development IdP may listen."""
from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
