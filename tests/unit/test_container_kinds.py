"""Which endpoint a request is for (imds.containers.kinds): the dispatch's rule and the lab's."""

from __future__ import annotations

import pytest

from imds.containers.kinds import ECS, IMDS, POD_IDENTITY, endpoint_of


@pytest.mark.parametrize(("path", "query", "host", "endpoint"), [
    ("/v2/credentials/task-1", "", "127.0.0.1:1338", ECS),
    ("/v2/credentials", "", "127.0.0.1:1338", ECS),  # no id: ECS's NoIdInRequest [K-05]
    ("/v2/credentialsX", "", "127.0.0.1:1338", IMDS),
    ("/v1/credentials", "id=task-1", "127.0.0.1:1338", ECS),
    ("/v1/credentials", "id=", "127.0.0.1:1338", ECS),
    ("/v1/credentials", "a=1&%69d=task-1", "127.0.0.1:1338", ECS),  # decoded as ECS reads it
    ("/v1/credentials", "", "169.254.170.2", ECS),  # the relative-URI flow [K-01]
    ("/v1/credentials", "", "169.254.170.2:80", ECS),
    ("/v1/credentials", "", "169.254.170.23", POD_IDENTITY),
    ("/v1/credentials", "", "[fd00:ec2::23]:80", POD_IDENTITY),
    ("/v1/credentials", "", "127.0.0.1:1338", POD_IDENTITY),
    ("/v1/credentials", "ids=1", "localhost:1338", POD_IDENTITY),
    ("/v1/credentials", "", None, POD_IDENTITY),
    ("/v1/credentials/", "", "169.254.170.23", IMDS),
    ("/latest/meta-data/iam/security-credentials/role", "", "169.254.170.2", IMDS),
    ("/latest/api/token", "", "169.254.169.254", IMDS),
])
def test_each_request_has_one_endpoint(path: str, query: str, host: str | None,
                                       endpoint: str) -> None:
    headers = {} if host is None else {"host": host}
    assert endpoint == endpoint_of(path, query, headers.get)
