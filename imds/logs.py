"""
Log setup: one line per event, as text or JSON, never a secret.

A client chooses some of what is logged (a path, a fault's paths, the bytes of a request
it refused), so no formatted line may contain a character that ends or rewrites a line:
`printable` escapes them, each formatter applies it to the whole event, and call sites
that interpolate client text apply it too, for hosts that format records their own way
(the pytest plugin runs imds in-process). `Throttle` bounds how many lines an
unauthenticated client can make the server write.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
import time

# aiohttp's access logger: requests answered by aiohttp and by imds.http.fastpath log here.
ACCESS = logging.getLogger("aiohttp.access")
# An IMDS token as imds issues them [T-07]: 56 characters, URL-safe base64, padded.
_TOKEN_SHAPED = re.compile(r"[A-Za-z0-9_-]{54}==")


# repr's escapes for the characters that end or rewrite a line on a terminal.
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: str) -> str:
    """
    `text` with every character str.isprintable() refuses (C0 and C1 controls, DEL, line
    and paragraph separators, lone surrogates, format characters) written as a repr-style
    escape (`\\n`, `\\x1b`, `\\u2028`), so it is always part of one line. Other text,
    non-ASCII letters included, is returned as it is.
    """
    if text.isprintable():  # the common case: one C call, no copy
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)


def _escape(char: str) -> str:
    code = ord(char)
    if char in _ESCAPES:
        return _ESCAPES[char]
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def log_access(remote: str, method: str, raw_path: str, status: int, length: int,
               seconds: float) -> None:
    """
    One debug line per request; never a header (the token lives in one), and a token
    pasted into a path by mistake is blanked. `raw_path` is percent-encoded and the parsers
    refuse control characters in it; `printable` holds even if one let some through.
    """
    ACCESS.debug('%s "%s %s" %s %s %.6f', remote, printable(method),
                 printable(_TOKEN_SHAPED.sub("(token)", raw_path)), status, length, seconds)


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message`, the whole event on one line (a traceback included)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return printable(super().format(record))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        # json.dumps escapes control characters anyway; the message is escaped as in the
        # text format, so a consumer printing it (`jq -r .message`) prints one line too.
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": printable(record.getMessage()),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class DropRequestEcho(logging.Filter):
    """
    imds.http.aioserver answers and logs malformed requests itself; this keeps any other line
    aiohttp's server logger writes (a connection-level error, say) to the event and the
    exception's type, since a traceback may quote request bytes with a token header.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            record.msg = f"{record.getMessage()}: {type(exc).__name__}"
            record.args = None
            record.exc_info = None
            record.exc_text = None
        return True


def configure(level: str, fmt: str) -> None:
    """Send imds's and aiohttp's logs to stderr at `level`, as `text` or `json` lines."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.server").addFilter(DropRequestEcho())
    # botocore at debug prints request headers and signed payloads; keep it quiet even
    # when imds itself is debugging, so no log line ever carries a credential.
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, root.level))


class Throttle:
    """
    At most a line or two per source and interval for events an unauthenticated client can
    repeat at will (refused control calls): the first from a source is logged in full,
    later ones are counted and reported as one summary line at the end of the interval
    ("N more … from ADDR in the last 60 s"). A source quiet for a whole interval is
    forgotten, so its next event is logged in full again. The table is capped: past
    `max_sources` addresses, new ones share one count, so memory stays bounded whatever
    the number of addresses. Runs on the event loop; no lock.
    """

    def __init__(self, logger: logging.Logger, what: str, *, interval: float = 60.0,
                 max_sources: int = 256) -> None:
        self._log = logger
        self._what = what
        self.interval = interval
        self.max_sources = max_sources
        # source -> events not logged since the last summary
        self.counts: dict[str, int] = {}
        self.overflow = 0
        self._timer: asyncio.TimerHandle | None = None

    def __call__(self, source: str, msg: str, *args: object) -> None:
        """Log `msg % args` at warning unless `source` was logged this interval: count it."""
        counts = self.counts
        known = counts.get(source)
        if known is not None:
            counts[source] = known + 1
        elif len(counts) >= self.max_sources:
            self.overflow += 1
        else:
            counts[source] = 0
            self._log.warning(msg, *args)
        if self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # called off the loop: summaries wait for flush()
                return
            self._timer = loop.call_later(self.interval, self._tick)

    def flush(self) -> None:
        """Write the summaries of the interval that ends now and forget quiet sources."""
        shown = f"{self.interval:g} s"
        for source, count in list(self.counts.items()):
            if count:
                self._log.warning("%d more %s from %s in the last %s", count, self._what,
                                  printable(source), shown)
                self.counts[source] = 0
            else:
                del self.counts[source]
        if self.overflow:
            self._log.warning("%d more %s from other addresses in the last %s",
                              self.overflow, self._what, shown)
            self.overflow = 0

    def close(self) -> None:
        """Stop the timer, writing what is still counted."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.flush()

    def _tick(self) -> None:
        self._timer = None
        self.flush()
        if self.counts:
            self._timer = asyncio.get_running_loop().call_later(self.interval, self._tick)
