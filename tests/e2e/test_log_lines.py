"""
One event is one log line, whatever a client puts in what is logged: a decoded path
(`%0A` is a newline) on the control port without a token, a fault's paths, control
characters in headers, a path on the metadata port. Checked on `imds serve` itself, in
both log formats, by reading everything it wrote to stderr.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import sys
from pathlib import Path

import pytest

from imds.logs import JsonFormatter, TextFormatter, printable
from tests.support import rawhttp
from tests.support.processes import clean_env, run_imds

# A whole forged line, as the text format writes one, after an encoded newline.
FORGED_LINE = "%0A2026-01-01%2000:00:00,000%20WARNING%20imds.control:%20forged-newline"
# Carriage return, an ANSI "erase line", NEL, LINE SEPARATOR, NUL, DEL: each ends or
# rewrites a line on some terminal or log viewer.
CONTROLS = "%0Dforged-cr%1B%5B2K%C2%85forged-nel%E2%80%A8forged-ls%00%7F"
LINE_START = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ \S+: ")


def control_url(banner: list[str]) -> str:
    line = next(x for x in banner if "control API" in x)
    match = re.search(r"(http://\S+?)/ ", line)
    assert match is not None, line
    return match.group(1)


async def hostile_traffic(url: str, control: str, token: str) -> None:
    """Each request from its own loopback address, so none is folded into a summary."""

    async def send(base: str, raw: bytes, source: str) -> int | None:
        answer = await rawhttp.send(base, raw, source=source)
        return None if answer is None else answer.status

    assert 401 == await send(control, rawhttp.request("GET", "/api/status" + FORGED_LINE),
                             "127.0.0.2")
    assert 401 == await send(control, rawhttp.request(
        "DELETE", "/api/faults" + CONTROLS, {"Authorization": "Bearer wrong"}), "127.0.0.3")
    # Raw control characters in header values: aiohttp refuses the request (400).
    assert 400 == await send(control, rawhttp.request(
        "GET", "/api/status", {"User-Agent": "forged-header\x1b[2K\x0b"}), "127.0.0.4")
    assert 400 == await send(url, rawhttp.request(
        "GET", "/latest/meta-data/", {"User-Agent": "forged-header\x1b[2K"}), "127.0.0.5")
    # An unknown path: EC2 answers 404 before it looks for a token.
    assert 404 == await send(url, rawhttp.request("GET", "/latest/meta-data/" + FORGED_LINE),
                             "127.0.0.6")
    body = json.dumps({"kind": "status", "paths": ["/x\n2026-01-01 forged-fault\x1b[2K"]})
    assert 201 == await send(control, rawhttp.request(
        "POST", "/api/faults", {"Authorization": f"Bearer {token}",
                                "Content-Type": "application/json",
                                "Content-Length": str(len(body))}, body.encode()),
        "127.0.0.7")


def serve_hostile(tmp_path: Path, log_format: str) -> list[str]:
    """Run `imds serve` at debug level through the hostile traffic; its stderr lines."""
    token = secrets.token_hex(16)
    args = ("--log-level", "debug", "--log-format", log_format, "--control-token", token)
    with run_imds(*args, env=clean_env(tmp_path)) as server:
        asyncio.run(hostile_traffic(server.url, control_url(server.banner), token))
    # The pipe is read in text mode: a raw \r would show here as a line break too.
    return "".join(server.stderr).splitlines()


class TestOneEventOneLine:
    def test_text_lines_are_printable_and_no_client_text_starts_one(
        self, tmp_path: Path
    ) -> None:
        lines = serve_hostile(tmp_path, "text")
        assert [] == [x for x in lines if not x.isprintable()]
        assert [] == [x for x in lines if not LINE_START.match(x)]
        assert [] == [x for x in lines if x.startswith("2026-01-01")]
        forged = [x for x in lines if "forged" in x]
        refused = [x for x in forged if "control: refused GET /api/status\\n2026" in x]
        assert 1 == len(refused), forged
        assert 1 == len([x for x in forged if "control: refused DELETE" in x
                         and "\\rforged-cr\\x1b[2K\\x85forged-nel\\u2028forged-ls\\x00\\x7f"
                         in x]), forged
        assert 1 == len([x for x in forged if "fault f1 added: status 503 on /x\\n2026-01-01"
                         " forged-fault\\x1b[2K" in x]), forged
        # Malformed requests are logged by the exception's type, never their bytes.
        assert [] == [x for x in forged if "forged-header" in x]
        assert any("aiohttp.access" in x and "%0A2026" in x for x in forged), forged

    def test_json_lines_are_json_objects_with_one_line_messages(
        self, tmp_path: Path
    ) -> None:
        lines = serve_hostile(tmp_path, "json")
        entries = [json.loads(x) for x in lines]
        assert all(isinstance(e, dict) for e in entries)
        assert [] == [e["message"] for e in entries if not e["message"].isprintable()]
        messages = [e["message"] for e in entries if "forged" in e["message"]]
        assert 1 == len([m for m in messages
                         if m.startswith("control: refused GET /api/status\\n2026")]), messages
        assert 1 == len([m for m in messages if m.startswith("fault f1 added")]), messages


class TestFormatters:
    def test_a_traceback_stays_on_its_events_line(self) -> None:
        """The text format escapes the whole event, exception included; JSON nests it."""
        try:
            raise ValueError("bad\nthing")
        except ValueError:
            record = logging.LogRecord("imds.test", logging.ERROR, __file__, 1,
                                       "failed on %s", ("a\nb",), sys.exc_info())
        text = TextFormatter().format(record)
        assert "\n" not in text
        assert "failed on a\\nb\\nTraceback (most recent call last):" in text
        entry = json.loads(JsonFormatter().format(record))
        assert "failed on a\\nb" == entry["message"]

    @pytest.mark.parametrize("raw, shown", [
        pytest.param("/latest/meta-data/", "/latest/meta-data/", id="plain"),
        pytest.param("caf\u00e9 \u2026", "caf\u00e9 \u2026", id="non-ascii-letters"),
        pytest.param("a\nb\rc\td", "a\\nb\\rc\\td", id="newlines-tab"),
        pytest.param("\x00\x1b[2K\x7f", "\\x00\\x1b[2K\\x7f", id="c0-del"),
        pytest.param("\x85\u2028\u2029", "\\x85\\u2028\\u2029", id="nel-separators"),
        pytest.param("\u202e\ud800", "\\u202e\\ud800", id="bidi-override-surrogate"),
    ])
    def test_printable_escapes_what_ends_or_rewrites_a_line(self, raw: str, shown: str) -> None:
        assert shown == printable(raw)
