"""Log setup: one line per event, as text or JSON, never a secret."""

from __future__ import annotations

import json
import logging
import re
import sys
import time

# aiohttp's access logger: requests answered by aiohttp and by imds.fastpath log here.
ACCESS = logging.getLogger("aiohttp.access")
# An IMDS token as imds issues them [T-07]: 56 characters, URL-safe base64, padded.
_TOKEN_SHAPED = re.compile(r"[A-Za-z0-9_-]{54}==")


def log_access(remote: str, method: str, raw_path: str, status: int, length: int,
               seconds: float) -> None:
    """
    One debug line per request; never a header (the token lives in one), and a token
    pasted into a path by mistake is blanked. `raw_path` is percent-encoded, so a hostile
    path cannot forge log lines.
    """
    ACCESS.debug('%s "%s %s" %s %s %.6f', remote, method,
                 _TOKEN_SHAPED.sub("(token)", raw_path), status, length, seconds)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class DropRequestEcho(logging.Filter):
    """
    imds.httpd answers and logs malformed requests itself; this keeps any other line
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
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.server").addFilter(DropRequestEcho())
    # botocore at debug prints request headers and signed payloads; keep it quiet even
    # when imds itself is debugging, so no log line ever carries a credential.
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, root.level))
