"""PROXY protocol v1/v2 headers, sans-IO: what the client writes to the private server first.

A raw TCP service behind the tunnel would otherwise see every caller as the
client's own address; HAProxy's PROXY protocol (v1 text, v2 binary) tells it
the caller's real address before any of the caller's bytes.
"""

from __future__ import annotations

import ipaddress
import struct

from ._address import parse_address

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def proxy_header(version: str, source: str, destination: str) -> bytes:
    """The header for a connection from ``source`` to ``destination`` (both ``host:port``).

    Addresses that are not IP literals of one family give the "unknown"
    form (v1 ``PROXY UNKNOWN``, v2 ``LOCAL``): the server then uses the
    connection's own addresses.
    """
    ends = _ends(source, destination)
    if ends is None:
        return b"PROXY UNKNOWN\r\n" if version == "v1" else V2_SIGNATURE + b"\x20\x00\x00\x00"
    (src_ip, src_port), (dst_ip, dst_port) = ends
    if version == "v1":
        family = "TCP4" if src_ip.version == 4 else "TCP6"
        return f"PROXY {family} {src_ip} {dst_ip} {src_port} {dst_port}\r\n".encode()
    family_byte = b"\x11" if src_ip.version == 4 else b"\x21"  # AF_INET/AF_INET6, STREAM
    body = src_ip.packed + dst_ip.packed + struct.pack("!HH", src_port, dst_port)
    return V2_SIGNATURE + b"\x21" + family_byte + struct.pack("!H", len(body)) + body


_End = tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]


def _ends(source: str, destination: str) -> tuple[_End, _End] | None:
    """Both addresses as (ip, port), or None unless both are IPs of one family."""
    try:
        src, dst = parse_address(source), parse_address(destination)
        src_ip, dst_ip = ipaddress.ip_address(src.host), ipaddress.ip_address(dst.host)
    except ValueError:
        return None
    if src_ip.version != dst_ip.version:
        return None
    return (src_ip, src.port), (dst_ip, dst.port)
