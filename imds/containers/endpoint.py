"""
Which container endpoint a request is for, on the listeners IMDS shares with them.

`/v2/credentials/<id>` is ECS's. `/v1/credentials` is both ECS's legacy form (with `?id=`)
[K-01] and the EKS Pod Identity agent's (no query; a service account token) [K-06]: a request
with an `id`, or sent to ECS's own address, is ECS's; every other one is a pod's.
"""

from __future__ import annotations

from urllib.parse import parse_qs

from imds.containers.documents import plain_error
from imds.containers.ecs import V2_PREFIX, EcsEndpoint, is_relative_flow
from imds.containers.podidentity import PATH, PodIdentityEndpoint
from imds.ec2.answer import Header, Reply

_GET_HEAD = frozenset({"GET", "HEAD"})
# Both agents route GET only (Go's mux answers other methods 405); HEAD is GET without a
# body, as for IMDS.
_NOT_ALLOWED = plain_error(405, "Method Not Allowed")


class ContainerEndpoints:
    """imds.ec2.answer.Containers: ECS task credentials and EKS Pod Identity."""

    def __init__(self, ecs: EcsEndpoint, pods: PodIdentityEndpoint) -> None:
        self.ecs = ecs
        self.pods = pods

    def answer(self, method: str, path: str, query: str, header: Header) -> Reply | None:
        if path.startswith(V2_PREFIX):
            if path != V2_PREFIX and path[len(V2_PREFIX)] != "/":
                return None  # `/v2/credentialsX`: not ours
            ecs = True
        elif path == PATH:
            asked = bool(query) and "id" in parse_qs(query, keep_blank_values=True)
            ecs = asked or is_relative_flow(header)
        else:
            return None
        if method not in _GET_HEAD:
            return _NOT_ALLOWED
        if ecs:
            return self.ecs.answer(path, query, header)
        return self.pods.answer(header)
