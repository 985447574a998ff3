"""One guard for every URL a tool fetches on behalf of the model, a user or an answer.

The check runs where the connection is made (actors/net/client.py for httpx, actors/net/proxy.py for
yt-dlp and OpenCV/ffmpeg), so it covers every redirect, and the address it approves is the
address it connects to: no second DNS lookup. Its messages name no address a name resolved to,
and a refusal at connect time (a redirect, a segment) names no host: the model learns that a
connection was refused, not what lies behind it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
METADATA = {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254"),
            ipaddress.ip_address("100.100.100.200")}


REFUSED = ("refused: address not allowed (private, loopback, link-local or metadata); an "
           "operator can allow it with LLMCAM_ALLOW_HOSTS")


class BlockedAddress(PermissionError):
    """The URL leads to a private, loopback, link-local or metadata address."""


class Unresolvable(BlockedAddress):
    """The host name has no address (so nothing was connected to)."""


class UrlGuard:
    def __init__(self, allow: Iterable[str] = ()) -> None:
        self.allow_names: set[str] = set()
        self.allow_nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for entry in allow:
            try:
                self.allow_nets.append(ipaddress.ip_network(entry.strip(), strict=False))
            except ValueError:
                self.allow_names.add(entry.strip().lower().rstrip("."))

    @staticmethod
    def is_public(ip: IPAddress) -> bool:
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        return not (ip in METADATA or ip.is_private or ip.is_loopback or ip.is_link_local
                    or ip.is_multicast or ip.is_reserved or ip.is_unspecified
                    or ip in ipaddress.ip_network("100.64.0.0/10"))

    def permits(self, host: str, ip: IPAddress) -> bool:
        if self.is_public(ip) or host.lower().rstrip(".") in self.allow_names:
            return True
        return any(ip in net for net in self.allow_nets)

    def resolve(self, host: str, port: int) -> list[IPAddress]:
        """Addresses for host that this guard lets a connection reach; raises if none."""
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise Unresolvable(f"cannot resolve host {host!r}: "
                               f"{getattr(exc, 'strerror', None) or 'invalid name'}") from None
        addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
        allowed = [ip for ip in addresses if self.permits(host, ip)]
        if not allowed:
            raise BlockedAddress(REFUSED)
        return allowed

    async def check_url(self, url: str) -> str:
        """Check a URL (the model's or a user's own) before another library opens it: a clear
        early answer that names the host it was given. Returns the URL."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise BlockedAddress(f"refused: only http(s) URLs are fetched, not {url[:100]!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            await asyncio.to_thread(self.resolve, parts.hostname, port)
        except Unresolvable:
            raise
        except BlockedAddress:
            raise BlockedAddress(f"refused: {parts.hostname} is a private, loopback, link-local "
                                 "or metadata address; an operator can allow it with "
                                 "LLMCAM_ALLOW_HOSTS") from None
        return url
