"""Behind a reverse proxy: believe ``X-Forwarded-For`` / ``Forwarded`` from trusted peers only.

uvicorn's ``--forwarded-allow-ips`` semantics: a comma-separated list of addresses or networks
(or ``*``) the server trusts to tell the client's address. From any other peer the headers are
ignored, so nobody can forge an address by sending the header directly. Pure functions, no I/O.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from websockets.datastructures import Headers

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class TrustedProxies:
    """The peers whose forwarding headers are believed."""

    networks: tuple[Network, ...] = ()
    everyone: bool = False

    def __contains__(self, address: str) -> bool:
        if self.everyone:
            return True
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.networks)

    def __bool__(self) -> bool:
        return self.everyone or bool(self.networks)


def parse_trusted(spec: Iterable[str] | str | None) -> TrustedProxies:
    """Parse ``--forwarded-allow-ips``: ``"127.0.0.1,10.0.0.0/8"``, ``"*"``, a list, or None (nobody).

    Raises:
        ValueError: an entry that is neither an address nor a network.
    """
    if spec is None:
        return TrustedProxies()
    items = [part.strip() for part in spec.split(",")] if isinstance(spec, str) else [str(s).strip() for s in spec]
    items = [item for item in items if item]
    if "*" in items:
        return TrustedProxies(everyone=True)
    networks = []
    for item in items:
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"not an IP address or network: {item!r}") from None
    return TrustedProxies(tuple(networks))


def client_address(peer: str, headers: Headers, trusted: TrustedProxies) -> str:
    """Return the client's address: ``peer``, or what trusted proxies say when ``peer`` is one.

    Walks the forwarded chain from the nearest hop back, past every trusted proxy, and returns
    the first address not trusted (the client as the outermost trusted proxy saw it). A hop
    that is not an IP address (``unknown``, ``_hidden``, garbage) ends the walk at the trusted
    hop before it: whatever stands further left was written by nobody the server trusts.
    """
    if not trusted or peer not in trusted:
        return peer
    nearest = peer
    for hop in reversed(_forwarded_chain(headers)):
        if hop is None:
            return nearest
        if hop not in trusted:
            return hop
        nearest = hop
    return nearest  # every hop is trusted: the farthest one


def _forwarded_chain(headers: Headers) -> list[str | None]:
    """The hops a request passed through, client first (``X-Forwarded-For``, else RFC 7239 ``Forwarded``).

    One entry per hop: its IP address, or None where the hop named none. ``X-Forwarded-For``
    comes first, as uvicorn reads it: it is what nginx and most load balancers write, and a
    client's own ``Forwarded`` header, which such a proxy passes on untouched, must not win.
    """
    hops: list[str] = []
    forwarded_for = headers.get_all("X-Forwarded-For")
    if forwarded_for:
        for value in forwarded_for:
            hops.extend(_strip_address(part) for part in value.split(","))
    else:
        for value in headers.get_all("Forwarded"):
            for element in value.split(","):
                named = ""  # an element without for= names no address
                for pair in element.split(";"):
                    name, _, raw = pair.strip().partition("=")
                    if name.lower() == "for":
                        named = _strip_address(raw)
                hops.append(named)
    return [hop if _is_address(hop) else None for hop in hops]


def _strip_address(raw: str) -> str:
    """``"[2001:db8::1]:4711"`` -> ``2001:db8::1``; ``192.0.2.1:80`` -> ``192.0.2.1``."""
    value = raw.strip().strip('"')
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    if value.count(":") == 1:
        return value.split(":")[0]
    return value


def _is_address(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True
