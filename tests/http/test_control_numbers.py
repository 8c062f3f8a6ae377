"""
The control API answers 400, naming the field, to numbers no field can hold: `Infinity`,
`-Infinity` and `NaN` (which Python's json reads though JSON has none) and numbers past a
float's range (`1e400`, read as infinity), in every numeric field of every endpoint; it
never answers 500 and keeps serving.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imds.errors import FaultError
from imds.lab.faultspec import KINDS, FaultSpec
from imds.server import Running, ServerThread
from tests.conftest import make_config
from tests.http.test_fuzz import FUZZ, serves_normally
from tests.support import rawhttp

NON_FINITE = ("Infinity", "-Infinity", "NaN", "1e400", "-1e400")
# Every numeric field of the control API, with a body it is valid in.
FIELDS = [
    pytest.param("/api/faults", {"kind": "status"}, "count", id="fault-count"),
    pytest.param("/api/faults", {"kind": "status"}, "status", id="fault-status"),
    pytest.param("/api/faults", {"kind": "status"}, "duration", id="fault-duration"),
    pytest.param("/api/faults", {"kind": "latency"}, "delay", id="fault-delay"),
    pytest.param("/api/settings", {}, "lifetime", id="settings-lifetime"),
    pytest.param("/api/settings", {}, "refresh_ahead", id="settings-refresh-ahead"),
]
# The fields each endpoint takes; `role` is no number, but a number may come in it.
ENDPOINT_FIELDS = {
    "/api/faults": ("count", "status", "duration", "delay"),
    "/api/settings": ("lifetime", "refresh_ahead", "role"),
    "/api/rotate": ("role",), "/api/expire": ("role",), "/api/revoke": ("role",),
}


def call(running: Running, method: str, path: str, body: str | None = None) -> tuple[int, str]:
    """One control API call over a raw socket: the body is sent exactly as written."""
    assert running.control is not None
    headers = {"Authorization": f"Bearer {running.control.token}"}
    data = b""
    if body is not None:
        data = body.encode()
        headers.update({"Content-Type": "application/json", "Content-Length": str(len(data))})
    answer = asyncio.run(rawhttp.send(running.control.url,
                                      rawhttp.request(method, path, headers, data)))
    assert answer is not None
    return answer.status, answer.body.decode()


def as_json(fields: dict[str, object], extra: dict[str, str]) -> str:
    """`fields` as JSON, then `extra` with values spliced in verbatim (`Infinity`, `1e400`)."""
    parts = [f"{json.dumps(k)}: {json.dumps(v)}" for k, v in fields.items()]
    parts += [f"{json.dumps(k)}: {v}" for k, v in extra.items()]
    return "{" + ", ".join(parts) + "}"


@pytest.fixture(scope="module")
def server() -> Iterator[Running]:
    thread = ServerThread(make_config())
    yield thread.start()
    thread.stop()


class TestNonFiniteNumbers:
    @pytest.mark.parametrize("number", NON_FINITE)
    @pytest.mark.parametrize("path, base, field", FIELDS)
    def test_each_numeric_field_answers_400_naming_the_field(
        self, server: Running, path: str, base: dict[str, object], field: str, number: str
    ) -> None:
        status, body = call(server, "POST", path, as_json(base, {field: number}))
        assert (400, {"error": f"{field}: {number} is not a finite number"}) == \
            (status, json.loads(body))
        assert 200 == call(server, "GET", "/api/status")[0]

    @pytest.mark.parametrize("body, error", [
        pytest.param('{"kind": "status", "paths": [NaN]}', "paths: NaN is not a finite number",
                     id="in-a-list"),
        pytest.param('{"role": {"x": Infinity}}', "x: Infinity is not a finite number",
                     id="nested-object"),
    ])
    def test_anywhere_in_the_body_they_are_400(
        self, server: Running, body: str, error: str
    ) -> None:
        path = "/api/rotate" if body.startswith('{"role"') else "/api/faults"
        status, answer = call(server, "POST", path, body)
        assert (400, {"error": error}) == (status, json.loads(answer))

    @pytest.mark.parametrize("field", ["count", "status"])
    @pytest.mark.parametrize("number", [math.inf, -math.inf])
    def test_fault_spec_refuses_them_from_python_callers_too(
        self, field: str, number: float
    ) -> None:
        """imds_server.fault() (the pytest plugin) parses its keywords the same way."""
        with pytest.raises(FaultError, match=f"^{field}: expected a finite number"):
            FaultSpec.parse({"kind": "status", field: number})


# Numbers at and past every edge, as they would appear in a body.
EXTREME = st.one_of(
    st.sampled_from(NON_FINITE),
    st.sampled_from(["1e308", "-1e308", "5e-324", "-0.0", "0", "1", "503", "2.5",
                     "1" + "0" * 30, "-" + "9" * 400, '"Infinity"', '"1e400"', '"nan"',
                     '"-inf"', "true", "null"]),
    st.floats().map(json.dumps),  # Infinity, NaN and everything between
    st.integers().map(str),
)
# Most examples go where the numbers are.
PATHS = st.sampled_from(["/api/faults"] * 3 + ["/api/settings"] * 2 + ["/api/rotate",
                                                                       "/api/expire",
                                                                       "/api/revoke"])


class TestNeverA500:
    @FUZZ
    @given(request=PATHS.flatmap(lambda path: st.tuples(
               st.just(path),
               st.dictionaries(st.sampled_from(ENDPOINT_FIELDS[path]), EXTREME, max_size=3))),
           kind=st.sampled_from(KINDS))
    def test_extreme_numbers_get_an_answer_and_the_server_keeps_serving(
        self, server: Running, request: tuple[str, dict[str, str]], kind: str
    ) -> None:
        path, numbers = request
        fields: dict[str, object] = {"kind": kind} if path == "/api/faults" else {}
        try:
            status, body = call(server, "POST", path, as_json(fields, numbers))
            assert status in (200, 201, 400, 404, 409), body
        finally:
            # What was injected goes, so the next example and the check below see a
            # server with no fault.
            assert 200 == call(server, "DELETE", "/api/faults")[0]
        assert 200 == call(server, "GET", "/api/status")[0]
        assert serves_normally(server)
