"""
aiohttp's per-connection protocol, as imds runs it (imds.http.aioserver builds one per
connection):

- `Ec2RequestHandler` answers what aiohttp cannot parse (bad request line, oversized or
  too many headers, bad encoding) with EC2's 400 and `Server: EC2ws` instead of aiohttp's
  own page [R-10], logs no byte of it (it may carry a token), and closes the connection.
- `ec2_errors` does the same for the pages aiohttp's router would send itself (a target
  that is no path: `CONNECT host:port`, `OPTIONS *`).
- `CappedHandler` answers a client that half-closes after its requests, then closes, as
  the fast path does (aiohttp's own drops the answers), and can be evicted at once by the
  connection cap. The control listener uses it as it is, with aiohttp's answers.
- `AccessLog` writes one line per request at debug level only: a line per request at
  info took over a third of the CPU each request cost (docs/benchmarks.md).
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from imds.ec2 import wire as p
from imds.logs import log_access

log = logging.getLogger("imds.httpd")


class AccessLog(AbstractAccessLogger):
    """Requests aiohttp answered, one debug line each (imds.logs.log_access)."""

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.DEBUG)

    def log(self, request: BaseRequest, response: web.StreamResponse, time: float) -> None:
        log_access(request.remote or "", request.method, request.rel_url.raw_path,
                   response.status, response.body_length, time)


def _ec2_error(status: int) -> web.Response:
    """An error answer in EC2's shape [R-06] [R-10], closing the connection."""
    if status >= 500:
        body = p.EMPTY
    elif status == 404:
        body = p.NOT_FOUND_BODY
    elif status == 405:
        body = p.METHOD_NOT_ALLOWED_BODY
    else:
        status, body = 400, p.BAD_REQUEST_BODY
    response = web.Response(
        status=status,
        body=body,
        # [N-04] EC2 says it on every answer.
        headers={"Server": p.SERVER_NAME, "Content-Type": p.TEXT_PLAIN,
                 "Connection": "close"},
    )
    if status == 405:
        response.headers["Allow"] = p.METADATA_ALLOW
    response.force_close()
    return response


def ec2_errors(handler: Callable[[BaseRequest], Awaitable[web.StreamResponse]],
               ) -> Callable[[BaseRequest], Awaitable[web.StreamResponse]]:
    """
    The app's entry point, with aiohttp's own error pages replaced by EC2's. The router
    answers a target that is not a path (`CONNECT host:port`, `OPTIONS *`) before the
    catch-all route can see it.
    """

    async def answer(request: BaseRequest) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            return _ec2_error(exc.status)

    return answer


class CappedHandler(RequestHandler):
    """aiohttp's per-connection protocol, as the connection cap sees it."""

    # Requests answered on this connection (aiohttp counts those it read, _request_count),
    # and whether the client half-closed while some were still unanswered.
    _answered = 0
    _half_closed = False

    @property
    def idle(self) -> bool:
        """Waiting for (the rest of) a request, rather than answering one."""
        return not self._request_in_progress and not self._messages

    # asyncio's Protocol.eof_received returns bool | None; aiohttp's annotation says None.
    def eof_received(self) -> bool:  # type: ignore[override]
        """
        The client half-closed (`shutdown(SHUT_WR)` after its request: `nc -N`, socat
        and some proxies do it; no SDK does). It is owed the answers to the requests it
        completed, which the fast path gives; aiohttp's own handler lets the transport
        close at once and drops them. With nothing left to answer, the connection closes
        as before.
        """
        if self._answered >= self._request_count:
            return False
        # Keep the transport open for writing; `finish_response` closes it after the
        # last answer, since no further request can arrive.
        self._half_closed = True
        return True

    async def finish_response(
        self, request: BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        try:
            return await super().finish_response(request, resp, start_time)
        finally:
            self._answered += 1
            if self._half_closed and self._answered >= self._request_count:
                # aiohttp's `close`: end the connection once this answer is out, whatever
                # keep-alive said (the answer's bytes stay as they would have been).
                self.close()

    def evict(self) -> None:
        """Close now, dropping unsent bytes (`CappedServer` wants the descriptor back)."""
        transport = self.transport
        self.force_close()
        if transport is not None:
            # A close waits for the client to take what is unsent, maybe forever.
            transport.abort()


class Ec2RequestHandler(CappedHandler):
    """aiohttp's per-connection protocol, answering unparseable requests as EC2 would."""

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        # aiohttp's version logs the parser's message and a traceback, both of which quote
        # the offending bytes (possibly a token header), and answers with its own body.
        if status >= 500:
            # A bug in imds: say where, but not the exception's text (it may hold data).
            frames = "".join(traceback.format_tb(exc.__traceback__)) if exc else ""
            log.error("internal error answering %s: %s\n%s", request.remote,
                      type(exc).__name__, frames)
        else:
            log.debug("malformed request from %s: %s", request.remote, type(exc).__name__)
        if request.writer.output_size > 0:
            # Part of a response is out already; only closing the connection is left.
            raise ConnectionError("response already started")
        # [R-10] EC2's 400 page: parse errors are the client's. The connection closes
        # (the parser cannot find the next request after garbage), and the status line
        # says HTTP/1.0: aiohttp answers an unparsed request in the oldest version.
        return _ec2_error(400 if status < 500 else status)
