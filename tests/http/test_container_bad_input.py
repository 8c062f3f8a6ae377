"""
Tokens with CR or LF at the container endpoints, sent raw: no SDK sends one [K-03] (they
refuse such a token, and an HTTP client cannot put one in a header), but a hand-made
request can fold the header (obs-fold) or cut it with a bare CR. The parser answers 400
whichever path holds the connection (imds.http.fastpath hands such a head to aiohttp), no
credentials leave, and the server serves on.
"""

from __future__ import annotations

import pytest

from imds.containers.satoken import load_or_create_key, mint
from imds.server import Running
from tests.conftest import ServerFactory
from tests.support.rawhttp import RawResponse, send

TOKEN = "raw-container-token-0123456789"

# Where the token is cut, and with what.
CUTS = {
    "obs-fold-space": "\r\n ",
    "obs-fold-tab": "\r\n\t",
    "bare-cr": "\r",
    "bare-lf": "\n",
    "cr-before-crlf": "\r\r\n",
}


def raw_get(path: str, authorization: str, *, keep_alive: bool = False) -> bytes:
    connection = "keep-alive" if keep_alive else "close"
    return (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {authorization}\r\n"
            f"Connection: {connection}\r\n\r\n").encode("latin-1")


def targets(running: Running) -> dict[str, tuple[str, str]]:
    """Each endpoint's path and the token that gets its credentials."""
    pod = mint(load_or_create_key(running.config.state_dir), namespace="default",
               service_account="app", pod_name="app-0")
    return {"ecs": (f"/v2/credentials/{running.ecs_task}", TOKEN),
            "pod-identity": ("/v1/credentials", pod)}


def with_credentials(response: RawResponse | None) -> bool:
    return response is not None and 200 == response.status and b"AccessKeyId" in response.body


@pytest.mark.parametrize("fast_path", ["true", "false"])
@pytest.mark.parametrize("endpoint", ["ecs", "pod-identity"])
@pytest.mark.parametrize("cut", list(CUTS))
async def test_a_token_cut_by_cr_or_lf_gets_400_and_the_server_serves_on(
    imds_factory: ServerFactory, fast_path: str, endpoint: str, cut: str
) -> None:
    running = await imds_factory(container_token=TOKEN, fast_path=fast_path,
                                 connection_close="false")
    path, token = targets(running)[endpoint]
    middle = len(token) // 2
    response = await send(running.url, raw_get(path, token[:middle] + CUTS[cut] +
                                               token[middle:]))
    assert response is not None
    assert 400 == response.status
    assert "EC2ws" == response.headers["server"]
    assert b"AccessKeyId" not in response.body
    assert "close" == response.headers.get("connection")
    # The same request with the token whole, kept alive, then again: served.
    for _ in range(2):
        assert with_credentials(await send(running.url, raw_get(path, token,
                                                                keep_alive=True)))
