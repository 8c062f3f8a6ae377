"""
The plain head's grammar while a head arrives (imds.http.plainhead.Prefix), in memory: every
piece of a request the fast path answers keeps it waiting for the rest, and a head that
can no longer be one is refused at the byte that says so, however the head is split.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imds.http.plainhead import HEAD, Prefix
from tests.http.test_fast_path_parity import BASES

TOKEN = "AQAEAJHtU0Tt2q3W6G9KqKpejCXBm3KCiisAAXE_S8JNQyx4SA6uEw=="
# The SDK-like requests of the parity table that the fast path answers (HTTP/1.1 GET or
# PUT with a Host), as they go on the wire.
PLAIN = [
    pytest.param(("\r\n".join(lines) + "\r\n\r\n").replace("{token}", TOKEN)
                 .replace("{task}", "app").replace("{port}", "1338")
                 .replace("{ecs}", "E" * 43).replace("{pod}", "P.Q.R").encode(), id=name)
    # A query is not plain (imds.http.plainhead): `?id=` goes to aiohttp.
    for name, lines in BASES.items()
    if lines[0].startswith(("GET ", "PUT ")) and "?" not in lines[0]
]


def fed(pieces: list[bytes]) -> list[bool]:
    """What `extends` says after each piece, the head so far growing piece by piece."""
    prefix = Prefix()
    head = bytearray()
    said = []
    for piece in pieces:
        head += piece
        said.append(prefix.extends(head))
    return said


class TestPrefix:
    @pytest.mark.parametrize("head", PLAIN)
    def test_a_plain_head_is_followed_however_it_is_split(self, head: bytes) -> None:
        assert HEAD.fullmatch(head) is not None
        assert all(fed([bytes([byte]) for byte in head]))
        for at in range(len(head) + 1):
            assert [True, True] == fed([head[:at], head[at:]])

    @pytest.mark.parametrize("head, wrong_at", [
        pytest.param(b"GET /latest/meta-data/ HTTP/1.1\nHost: x\n\n", 31, id="bare-lf"),
        pytest.param(b"GET /latest/meta-data/ HTTP/1.1\r\nHost: x\rY", 41, id="bare-cr"),
        pytest.param(b"GET /latest/meta-data/ HTTP/1.1\r\nBad Name: x", 36, id="space-in-name"),
        pytest.param(b"GET /latest/meta-data/ HTTP/1.1\r\n: x", 33, id="empty-name"),
        pytest.param(b"GET /latest/meta-data/ HTTP/1.1\r\nX: a\x00b", 37, id="nul"),
        pytest.param(b"GET /latest/meta-data/ HTTP/1.1\r\nX: caf\xe9", 39, id="obs-text"),
        pytest.param(b"GET /latest/meta-data/ HTTP/1.1\r\nX: a\r\n b", 39, id="folded"),
        pytest.param(b"GET /latest/meta-data/ HTTP/1.0\r\n", 30, id="http-1.0"),
        pytest.param(b"GET /latest/meta-data/\r\n", 22, id="http-0.9"),
        pytest.param(b"GET /latest/./meta-data/ HTTP/1.1", 12, id="dot-segment"),
        pytest.param(b"GET /latest/meta%2Ddata/ HTTP/1.1", 16, id="percent"),
        pytest.param(b"GET http://169.254.169.254/ HTTP/1.1", 4, id="absolute-form"),
        pytest.param(b"GET  /latest/ HTTP/1.1", 4, id="double-space"),
        pytest.param(b"HEAD /latest/ HTTP/1.1", 0, id="head"),
        pytest.param(b"get /latest/ HTTP/1.1", 0, id="lower-case-method"),
        pytest.param(b"\x16\x03\x01\x00\xa5", 0, id="tls"),
    ])
    def test_a_head_that_cannot_become_plain_is_refused_where_it_goes_wrong(
        self, head: bytes, wrong_at: int
    ) -> None:
        assert fed([head[:wrong_at]]) == [True]
        assert fed([head[:wrong_at + 1]]) == [False]
        assert fed([bytes([byte]) for byte in head[:wrong_at + 1]]) == [True] * wrong_at + [False]

    @settings(max_examples=300, deadline=None, database=None)
    @given(head=st.sampled_from([p.values[0] for p in PLAIN]), edits=st.lists(
        st.tuples(st.integers(0, 400), st.sampled_from(
            [b"", b"\r", b"\n", b"\t", b" ", b"\x00", b":", b"/", b".", b"%", b"a", b"\xe9",
             b"\r\n", b"\r\n "])), min_size=1, max_size=3),
        split=st.integers(0, 400))
    def test_a_complete_head_passes_exactly_when_it_is_plain(
        self, head: bytes, edits: list[tuple[int, bytes]], split: int
    ) -> None:
        """Followed to its blank line, the grammar says what `HEAD` says of the whole."""
        changed = bytearray(head)
        for at, edge in edits:
            at %= len(changed)
            changed[at:at + 1] = edge
        end = changed.find(b"\r\n\r\n")
        if end < 0:
            return
        whole = bytes(changed[:end + 4])
        said = fed([whole[:split], whole[split:]])
        assert (HEAD.fullmatch(whole) is not None) == all(said)
