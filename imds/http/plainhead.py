"""
What a plain request head is: the one shape the fast path (imds.http.fastpath) answers itself,
as a whole (`HEAD`) and while it is still arriving (`Prefix`).

aiohttp's parser (llhttp, strict) judges a request byte by byte and answers 400 at the
first byte no request may have, before the head is complete. The fast path waits for the
blank line that ends a head; if it waited for one that can never become plain (lines ended
by a bare LF or CR, a NUL, a bad method or header name), the client would get nothing
and a close at the idle timeout where aiohttp answers at once. So while a head arrives
`Prefix` follows it, and the fast path hands it to aiohttp as soon as it leaves this
grammar: aiohttp then answers exactly as if it had had the connection from the start.
"""

from __future__ import annotations

import re

# RFC 9110 tchar: what a header name is made of.
TCHAR = rb"!#$%&'*+.^_`|~0-9A-Za-z-"
# The path characters the fast path takes: those of role names ([\w+=,.@-], IAM) and of
# every metadata path, and no `%` (decoding), `?` (query) or `#`: aiohttp's request.path
# would then differ from the bytes on the wire.
PCHAR = rb"A-Za-z0-9._~+=,@:-"
# Header value characters it takes (visible ASCII, space, tab; no obs-text).
VCHAR = rb"\x20-\x7e\t"

# One complete plain head: GET or PUT, an origin-form path with no dot segment (`/.`,
# which aiohttp normalises), HTTP/1.1, well-formed fields, CRLF line ends.
HEAD = re.compile(
    rb"(GET|PUT) ((?:/(?!\.)[" + PCHAR + rb"]*)+) HTTP/1\.1\r\n"
    rb"((?:[" + TCHAR + rb"]+:[" + VCHAR + rb"]*\r\n)*)\r\n"
)

_PATH_RUN = re.compile(rb"[" + PCHAR + rb"]*")
_NAME_RUN = re.compile(rb"[" + TCHAR + rb"]*")
_VALUE_RUN = re.compile(rb"[" + VCHAR + rb"]*")
_METHODS = (b"GET ", b"PUT ")
_VERSION = b" HTTP/1.1\r\n"
_SLASH, _SPACE, _COLON, _CR, _LF, _DOT = 0x2F, 0x20, 0x3A, 0x0D, 0x0A, 0x2E

# Where in `HEAD` the bytes so far end.
_METHOD, _PATH, _SEGMENT_START, _SEGMENT, _IN_VERSION, _LINE, _NAME, _VALUE, _LINE_LF, \
    _END_LF, _DONE = range(11)


def _past(run: re.Pattern[bytes], head: bytes | bytearray, at: int) -> int:
    """Where the run of `run`'s characters that starts at `at` ends."""
    found = run.match(head, at)
    return at if found is None else found.end()


class Prefix:
    """
    Follows one head arriving in pieces: whether the bytes so far can still begin a
    `HEAD`. Each byte is looked at once however the head is split (runs of path, name
    and value characters by one regex match each), so trickling costs linear time.
    """

    __slots__ = ("_at", "_mark", "_phase")

    def __init__(self) -> None:
        self._at = 0
        self._phase = _METHOD
        # Where the version (with the space before it) began.
        self._mark = 0

    def extends(self, head: bytes | bytearray) -> bool:
        """
        False as soon as `head` (all bytes of the head so far, those seen by earlier calls
        included) can no longer become a plain head.
        """
        at, phase, end = self._at, self._phase, len(head)
        while at < end:
            if phase == _METHOD:
                n = min(end, 4)
                if head[:n] not in (_METHODS[0][:n], _METHODS[1][:n]):
                    return False
                at = n
                phase = _PATH if n == 4 else _METHOD
            elif phase == _PATH:
                if head[at] != _SLASH:
                    return False
                at += 1
                phase = _SEGMENT_START
            elif phase == _SEGMENT_START:
                if head[at] == _DOT:
                    return False
                phase = _SEGMENT
            elif phase == _SEGMENT:
                at = _past(_PATH_RUN, head, at)
                if at < end:
                    if head[at] == _SLASH:
                        at += 1
                        phase = _SEGMENT_START
                    elif head[at] == _SPACE:
                        self._mark = at
                        phase = _IN_VERSION
                    else:
                        return False
            elif phase == _IN_VERSION:
                done = at - self._mark
                n = min(end - at, len(_VERSION) - done)
                if head[at:at + n] != _VERSION[done:done + n]:
                    return False
                at += n
                if at - self._mark == len(_VERSION):
                    phase = _LINE
            elif phase == _LINE:
                if head[at] == _CR:
                    at += 1
                    phase = _END_LF
                elif _past(_NAME_RUN, head, at) > at:
                    phase = _NAME
                else:
                    return False
            elif phase == _NAME:
                at = _past(_NAME_RUN, head, at)
                if at < end:
                    if head[at] != _COLON:
                        return False
                    at += 1
                    phase = _VALUE
            elif phase == _VALUE:
                at = _past(_VALUE_RUN, head, at)
                if at < end:
                    if head[at] != _CR:
                        return False
                    at += 1
                    phase = _LINE_LF
            elif phase in (_LINE_LF, _END_LF):
                if head[at] != _LF:
                    return False
                at += 1
                phase = _LINE if phase == _LINE_LF else _DONE
            else:
                # Complete: what follows is the fast path's business (imds.http.fastpath).
                break
        self._at, self._phase = at, phase
        return True
