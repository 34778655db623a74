"""Which ``Host`` a request may name: the DNS-rebinding defence. Pure functions, no I/O.

A page on ``http://evil.example:5000`` whose owner re-points that name at 127.0.0.1 sends
``Host: evil.example:5000`` and a matching ``Origin``: the origin check alone lets it drive a
server on the developer's machine (webpack-dev-server's CVE-2018-14732, Vite's
CVE-2025-24010). So the server serves only names it was told about: IP literals (which no DNS
can re-point), ``localhost`` (and ``*.localhost``, which resolve to loopback by RFC 6761),
and ``allowed_hosts``. ``*`` accepts any name.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class AllowedHosts:
    names: frozenset[str] = frozenset()
    suffixes: tuple[str, ...] = ()  # from entries like ".example.com": the domain and its subdomains
    everyone: bool = False

    def allows(self, host: str | None) -> bool:
        """Whether a normalized host (see :func:`normalize`) may be served."""
        if host is None:
            return False
        if self.everyone or host in self.names or _is_ip(host):
            return True
        if host == "localhost" or host.endswith(".localhost"):
            return True
        return any(host == suffix[1:] or host.endswith(suffix) for suffix in self.suffixes)


def parse_allowed(spec: Iterable[str] | str | None) -> AllowedHosts:
    """Parse ``--allowed-hosts``: ``"app.example,.example.org"``, ``"*"``, a list, or None."""
    if spec is None:
        return AllowedHosts()
    items = [part.strip() for part in spec.split(",")] if isinstance(spec, str) else [str(s).strip() for s in spec]
    items = [item.lower().rstrip(".") for item in items if item]
    if "*" in items:
        return AllowedHosts(everyone=True)
    suffixes = tuple(item for item in items if item.startswith("."))
    return AllowedHosts(frozenset(item for item in items if not item.startswith(".")), suffixes)


def normalize(header: str) -> str | None:
    """``"Evil.Example.:5000"`` -> ``"evil.example"``; ``"[::1]:80"`` -> ``"::1"``; None if malformed."""
    value = header.strip().lower()
    if not value or any(c in value for c in " /\\@?#"):
        return None
    if value.startswith("["):
        end = value.find("]")
        if end == -1 or not _port_ok(value[end + 1 :]):
            return None
        host = value[1:end]
        return host if _is_ip(host) else None
    host, _, port = value.partition(":")
    if ":" in port or (port and not port.isdigit()):
        return None
    return host.rstrip(".") or None


def _port_ok(rest: str) -> bool:
    return rest == "" or (rest.startswith(":") and rest[1:].isdigit())


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
