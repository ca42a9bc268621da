"""Host names and addresses: the loopback rule, in one place.

Used by the DNS-rebinding rule (which Host and Origin names a loopback listener serves)
and by the config (a loopback listener with the local runtime has no load balancer in
front of it, so it needs no drain delay).
"""

from __future__ import annotations

import ipaddress


def normalized(host: str) -> str:
    """Host names compare without case and without a trailing root dot."""
    return host.lower().rstrip(".")


def is_loopback(host: str) -> bool:
    """Whether a hostname or address (no port; IPv6 with or without brackets) is loopback."""
    name = normalized(host.strip("[]"))
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False
