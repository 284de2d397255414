"""Which hosts plain http may reach: loopback only (the rule for upstream URLs in manifests, and for
the gateway URL the client commands send a token to)."""
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
