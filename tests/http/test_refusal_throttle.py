"""
A client without the control token cannot flood the log: refused calls and unparseable
requests on the control port cost one line per source, then one summary per interval,
and the table of sources is capped. The answers stay what they were (401, 400).
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import pytest

from imds.lab.control import REFUSALS
from imds.logs import Throttle
from imds.server import Running
from tests.conftest import ServerFactory
from tests.support import rawhttp
from tests.support.polling import until


def control_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name in ("imds.control", "aiohttp.server")]


def refusals(running: Running) -> Throttle:
    assert running.control is not None
    return running.control.runner.app[REFUSALS]


class TestRefusedCalls:
    async def test_a_thousand_refused_calls_write_one_line_and_one_summary(
        self, imds_factory: ServerFactory, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.INFO)
        running = await imds_factory()
        assert running.control is not None
        url = running.control.url
        # Kept-alive connections: a thousand requests in about a second.
        async with aiohttp.ClientSession() as http:
            for n in range(1000):
                headers = {"Authorization": "Bearer wrong"} if n % 2 else {}
                async with http.get(f"{url}/api/status?n={n}", headers=headers) as r:
                    assert 401 == r.status
        assert ["control: refused GET /api/status from 127.0.0.1 (no token)"] == \
            control_lines(caplog)
        refusals(running).flush()  # the interval ends
        assert ["control: refused GET /api/status from 127.0.0.1 (no token)",
                "999 more refused control requests from 127.0.0.1 in the last 60 s"] == \
            control_lines(caplog)

    async def test_malformed_requests_share_the_refusal_budget(
        self, imds_factory: ServerFactory, caplog: pytest.LogCaptureFixture
    ) -> None:
        """aiohttp logs each one as an error otherwise (imds.lab.control._ProtocolLog)."""
        caplog.set_level(logging.DEBUG)
        running = await imds_factory()
        assert running.control is not None
        for _ in range(200):
            answer = await rawhttp.send(running.control.url, b"GET /\x01 HTTP/1.1\r\n\r\n")
            assert answer is not None and 400 == answer.status
        assert ["control: refused a malformed request from 127.0.0.1 (InvalidURLError)"] == \
            control_lines(caplog)
        refusals(running).flush()
        assert "199 more refused control requests from 127.0.0.1 in the last 60 s" == \
            control_lines(caplog)[-1]

    async def test_each_source_gets_its_first_line_until_the_table_is_full(
        self, imds_factory: ServerFactory, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.INFO)
        running = await imds_factory()
        assert running.control is not None
        throttle = refusals(running)
        throttle.max_sources = 8
        for n in range(2, 22):  # 20 loopback addresses
            answer = await rawhttp.send(running.control.url,
                                        rawhttp.request("GET", "/api/status"),
                                        source=f"127.0.0.{n}")
            assert answer is not None and 401 == answer.status
        assert 8 == len(throttle.counts)
        assert 8 == len(control_lines(caplog))
        throttle.flush()
        assert "12 more refused control requests from other addresses in the last 60 s" == \
            control_lines(caplog)[-1]


class TestThrottle:
    async def test_the_summary_comes_by_itself_and_a_quiet_source_is_forgotten(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.INFO)
        log = logging.getLogger("imds.test")
        throttle = Throttle(log, "refused calls", interval=0.05)
        try:
            for _ in range(5):
                throttle("10.0.0.1", "refused %s", "10.0.0.1")
            assert ["refused 10.0.0.1"] == [r.getMessage() for r in caplog.records]
            await until(lambda: len(caplog.records) == 2, 5.0, "the summary")
            assert "4 more refused calls from 10.0.0.1 in the last 0.05 s" == \
                caplog.records[1].getMessage()
            # A whole quiet interval: the source is forgotten and the timer stops.
            await until(lambda: not throttle.counts, 5.0, "the source forgotten")
            throttle("10.0.0.1", "refused %s", "10.0.0.1")
            assert "refused 10.0.0.1" == caplog.records[-1].getMessage()
        finally:
            throttle.close()

    async def test_closing_writes_what_is_counted(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.INFO)
        throttle = Throttle(logging.getLogger("imds.test"), "refused calls")
        throttle("10.0.0.1", "refused")
        throttle("10.0.0.1", "refused")
        throttle.close()
        await asyncio.sleep(0)
        assert ["refused", "1 more refused calls from 10.0.0.1 in the last 60 s"] == \
            [r.getMessage() for r in caplog.records]
