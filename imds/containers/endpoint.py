"""
The container endpoints beside IMDS: each request goes to ECS's or the EKS Pod Identity
agent's, as imds.containers.kinds tells them apart.
"""

from __future__ import annotations

from imds.containers.documents import plain_error
from imds.containers.ecs import EcsEndpoint
from imds.containers.kinds import ECS, IMDS, endpoint_of
from imds.containers.podidentity import PodIdentityEndpoint
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
        endpoint = endpoint_of(path, query, header)
        if endpoint == IMDS:
            return None
        if method not in _GET_HEAD:
            return _NOT_ALLOWED
        if endpoint == ECS:
            return self.ecs.answer(path, query, header)
        return self.pods.answer(header)
