"""Fixtures of the servers-on-loopback tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.sts_support import BASE_KEY_ID, BASE_SECRET, StsProxy


@pytest.fixture
def sts(moto_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[StsProxy]:
    """
    moto behind a proxy that records and breaks calls, and the fake base keys a server
    assumes roles with; anything that missed the proxy would hit a closed port.
    """
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", BASE_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", BASE_SECRET)
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    proxy = StsProxy(moto_url).start()
    yield proxy
    proxy.close()
