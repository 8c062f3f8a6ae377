"""
EC2 wire details in one place: header names, limits, error bodies, the time format.

Each constant cites its fact in docs/spec.md (ids in brackets).
"""

from __future__ import annotations

import datetime as dt

# token carried on metadata requests; [T-01] TTL asked for on the PUT.
TOKEN_HEADER = "X-aws-ec2-metadata-token"
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
# [T-05] the capitalisation EC2 itself sends back.
TTL_RESPONSE_HEADER = "X-Aws-Ec2-Metadata-Token-Ttl-Seconds"

# [T-02] inclusive bounds of a token's TTL in seconds.
TTL_MIN = 1
TTL_MAX = 21600

TOKEN_PATH = "/latest/api/token"

# [N-04] headers every real response carries.
SERVER_NAME = "EC2ws"
TEXT_PLAIN = "text/plain"
# [R-01] [U-01] user data is the one binary body.
OCTET_STREAM = "application/octet-stream"

# [T-11] the token path answers other methods with this Allow header.
TOKEN_ALLOW = "OPTIONS, PUT"
# undocumented; metadata paths only take GET and HEAD [T-18].
METADATA_ALLOW = "GET, HEAD"


def _xhtml(status: str) -> bytes:
    # [R-06] [R-10] EC2's error page, byte for byte as AEMM and captures show it.
    return (
        '<?xml version="1.0" encoding="iso-8859-1"?>\n'
        '<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Transitional//EN"\n'
        '\t"http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd">\n'
        '<html xmlns="http://www.w3.org/1999/xhtml" xml:lang="en" lang="en">\n'
        " <head>\n"
        f"  <title>{status}</title>\n"
        " </head>\n"
        " <body>\n"
        f"  <h1>{status}</h1>\n"
        " </body>\n"
        "</html>\n"
    ).encode("ascii")


NOT_FOUND_BODY = _xhtml("404 - Not Found")
BAD_REQUEST_BODY = _xhtml("400 - Bad Request")
METHOD_NOT_ALLOWED_BODY = _xhtml("405 - Method Not Allowed")
# [A-03] [T-09] [T-12] 401 and 403 come with an empty body.
EMPTY = b""

# [N-06] versions `/` lists; every one serves the same tree.
VERSIONS = (
    "1.0",
    "2007-01-19",
    "2007-03-01",
    "2007-08-29",
    "2007-10-10",
    "2007-12-15",
    "2008-02-01",
    "2008-09-01",
    "2009-04-04",
    "2011-01-01",
    "2011-05-01",
    "2012-01-12",
    "2014-02-25",
    "2014-11-05",
    "2015-10-20",
    "2016-04-19",
    "2016-06-30",
    "2016-09-02",
    "2018-03-28",
    "2018-08-17",
    "2018-09-24",
    "2019-10-01",
    "2020-10-27",
    "2021-01-03",
    "2021-03-23",
    "2021-07-15",
    "2022-09-24",
    "2024-04-11",
    "latest",
)

ISO8601 = "%Y-%m-%dT%H:%M:%SZ"


def iso8601(when: dt.datetime) -> str:
    """
    Format a UTC instant the one way every SDK parses.

    [C-09] botocore's expiry check uses strptime with exactly this format and silently
    skips on fractional seconds, so no fraction and a literal `Z`.
    """
    return when.astimezone(dt.UTC).strftime(ISO8601)


def from_epoch(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(int(seconds), dt.UTC)

# [N-05] the token response's hop limit (HttpPutResponseHopLimit): valid 1..64.
HOP_LIMIT_MIN = 1
HOP_LIMIT_MAX = 64
