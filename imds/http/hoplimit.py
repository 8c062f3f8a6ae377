"""
The token response's hop limit, as EC2's `HttpPutResponseHopLimit` [N-05].

EC2 sends the PUT response with an IP TTL of the instance's hop limit (default 1): a
client one routing hop further away (a container behind a NAT bridge) never receives its
token, times out, and falls back to IMDSv1 or fails [T-22]. Setting the TTL (IPv6: the
unicast hop limit) on the accepted socket just before the response is written gives the
same effect for real, on a real network; on loopback or a shared bridge it changes nothing.
"""

from __future__ import annotations

import contextlib
import socket
from typing import Any, Protocol


class SocketHolder(Protocol):
    """A transport, or anything else that can give its socket the way transports do."""

    def get_extra_info(self, name: str, default: Any = None) -> Any: ...


def limit_hops(transport: SocketHolder | None, hops: int) -> bool:
    """
    Make the packets still to be sent on this connection leave with at most `hops` hops.

    The caller must close the connection after the response: the socket keeps the limit,
    and later responses on a kept-alive connection must not inherit it. Returns False when
    the transport has no IP socket (a Unix socket, a test transport).
    """
    if transport is None:
        return False
    sock = transport.get_extra_info("socket")
    if sock is None:
        return False
    family = getattr(sock, "family", None)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, hops)
            # A dual-stack socket talking to an IPv4-mapped peer sends IPv4 packets, whose
            # TTL Linux takes from the IP-level option.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, hops)
        elif family == socket.AF_INET:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, hops)
        else:
            return False
    except OSError:
        return False
    return True


def apply_hop_limit(hops: int, transport: SocketHolder | None) -> bool:
    """
    Set the hop limit a reply asks for (imds.ec2.answer.Reply.hop_limit; 0 asks for none)
    on the connection's socket. True when it was set: the socket keeps the limit, so the
    connection must close after this reply. Call it before deciding anything else about
    the connection, never inside a short-circuiting condition.
    """
    return hops > 0 and limit_hops(transport, hops)
