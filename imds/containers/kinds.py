"""
Which endpoint a request is for: IMDS, ECS task credentials or EKS Pod Identity, all on the
listeners they share. One rule, read by the dispatch (imds.containers.endpoint) and by the
rotation lab (faults aimed at one endpoint, fetches counted by endpoint), so the two never
disagree. Pure: a path, the raw query and a header lookup in, a name out.

`/v2/credentials/<id>` is ECS's. `/v1/credentials` is both ECS's legacy form (with `?id=`)
[K-01] and the EKS Pod Identity agent's (no query; a service account token) [K-06]: a request
with an `id`, or sent to ECS's own address, is ECS's; every other one is a pod's. Any other
path is IMDS's (IMDS paths start with a version [N-06]).
"""

from __future__ import annotations

from typing import Final
from urllib.parse import parse_qs

from imds.containers.ecs import V1_PATH, V2_PREFIX, is_relative_flow
from imds.ec2.answer import Header

IMDS: Final = "imds"
ECS: Final = "ecs"
POD_IDENTITY: Final = "pod-identity"
ENDPOINTS: Final = (IMDS, ECS, POD_IDENTITY)


def endpoint_of(path: str, query: str, header: Header) -> str:
    """The endpoint that answers `path` (decoded) with `query` (raw) and these headers."""
    if path.startswith(V2_PREFIX):
        if path != V2_PREFIX and path[len(V2_PREFIX)] != "/":
            return IMDS  # `/v2/credentialsX`: not a container path
        return ECS
    if path != V1_PATH:
        return IMDS
    # An `id`, even an empty one (ECS's NoIdInRequest) [K-05]; pods send no query.
    if query and "id" in parse_qs(query, keep_blank_values=True):
        return ECS
    return ECS if is_relative_flow(header) else POD_IDENTITY
