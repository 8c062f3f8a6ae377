"""
Prometheus metrics for `/metrics` on the control listener.

The request path only bumps plain counters in `imds.lab.lab.Lab`; this collector turns them
into metric families when scraped. Paths become a fixed set of labels (the version
collapsed to `{version}`, the role to `{role}`, anything unknown to `other`) so a client
asking for random paths cannot grow the label set.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from imds.containers.ecs import V1_PATH, V2_PREFIX
from imds.ec2.wire import VERSIONS
from imds.lab.lab import Lab

# [M-01] the categories of `meta-data/` real instances show; [D-01] those of `dynamic/`.
_META = frozenset({
    "ami-id", "ami-launch-index", "ami-manifest-path", "ancestor-ami-ids", "autoscaling",
    "block-device-mapping", "elastic-inference", "events", "hibernation", "hostname", "iam",
    "identity-credentials", "instance-action", "instance-id", "instance-life-cycle",
    "instance-type", "ipv6", "kernel-id", "local-hostname", "local-ipv4", "mac", "metrics",
    "network", "placement", "product-codes", "profile", "public-hostname", "public-ipv4",
    "public-keys", "ramdisk-id", "reservation-id", "security-groups", "services", "spot",
    "system", "tags",
})
_DYNAMIC = frozenset({"instance-identity", "fws"})
_VERSIONS = frozenset(VERSIONS)
_CREDENTIAL_DIRS = frozenset({"security-credentials", "security-credentials-extended"})

CONTENT_TYPE = CONTENT_TYPE_LATEST


def path_label(path: str) -> str:
    """A bounded label for a request path."""
    if path == V1_PATH:
        # ECS's legacy path and Pod Identity's both [K-01] [K-06]: imds_credential_fetches
        # tells them apart.
        return V1_PATH
    if path.startswith(V2_PREFIX):
        tail = path[len(V2_PREFIX):]
        if tail in ("", "/"):
            return V2_PREFIX + "/"
        if tail[0] == "/":
            return V2_PREFIX + "/{id}"  # an ECS task id [K-01]
    parts = [s for s in path.split("/") if s]
    if not parts:
        return "/"
    version = parts[0]
    if version not in _VERSIONS:
        return "other"
    head = "/latest" if version == "latest" else "/{version}"
    rest = parts[1:]
    if not rest:
        return head + "/"
    top = rest[0]
    if rest == ["api", "token"]:
        return head + "/api/token"
    if top == "user-data":
        return head + "/user-data"
    if top == "meta-data":
        if len(rest) == 1:
            return head + "/meta-data/"
        category = rest[1]
        if category not in _META:
            return head + "/meta-data/other"
        if category == "iam" and len(rest) >= 3:
            if rest[2] in _CREDENTIAL_DIRS:
                role = "/{role}" if len(rest) > 3 else "/"
                return f"{head}/meta-data/iam/{rest[2]}{role}"
            return head + ("/meta-data/iam/info" if rest[2:] == ["info"]
                           else "/meta-data/iam/other")
        return f"{head}/meta-data/{category}"
    if top == "dynamic":
        if len(rest) == 1:
            return head + "/dynamic/"
        category = rest[1]
        return f"{head}/dynamic/{category if category in _DYNAMIC else 'other'}"
    return "other"


class LabCollector:
    """Reads one lab's counters at scrape time."""

    def __init__(self, lab: Lab) -> None:
        self._lab = lab

    def collect(self) -> Iterator[Metric]:
        lab = self._lab
        requests = CounterMetricFamily(
            "imds_requests", "Requests answered (IMDS and the container endpoints), by "
            "normalised path and status",
            labels=["path", "status"])
        totals: Counter[tuple[str, str]] = Counter()
        for (path, status), count in list(lab.requests.items()):
            totals[(path_label(path), str(status))] += count
        for (label, status), count in sorted(totals.items()):
            requests.add_metric([label, status], count)
        yield requests

        yield CounterMetricFamily("imds_tokens_issued", "IMDSv2 session tokens issued",
                                  value=lab.tokens_issued)
        fetches = CounterMetricFamily(
            "imds_credential_fetches", "Credential documents served to clients, by the "
            "endpoint that served them (imds, ecs, pod-identity)", labels=["endpoint"])
        for endpoint, count in lab.fetches_by_endpoint.items():
            fetches.add_metric([endpoint], count)
        yield fetches
        paths = CounterMetricFamily(
            "imds_fast_path", "Metadata requests the fast path answered (worked out, or "
            "kept from an identical request) and connections it handed to aiohttp",
            labels=["outcome"])
        paths.add_metric(["answered"], lab.fast_answered)
        paths.add_metric(["kept"], lab.fast_kept)
        paths.add_metric(["handed_over"], lab.handovers)
        yield paths

        rotations = CounterMetricFamily(
            "imds_rotations", "Credential fetches by the rotator, by outcome",
            labels=["outcome"])
        rotations.add_metric(["ok"], lab.rotations_ok)
        rotations.add_metric(["failed"], lab.rotations_failed)
        yield rotations

        histogram = lab.fetch_seconds
        fetch = HistogramMetricFamily(
            "imds_source_fetch_seconds", "Time the credential source took per fetch")
        fetch.add_metric([], histogram.cumulative(), histogram.sum)
        yield fetch
        yield CounterMetricFamily(
            "imds_source_fetch_errors", "Credential source fetches that failed "
            "(simulated outages included)", value=lab.fetch_errors)

        now = lab.clock()
        left = GaugeMetricFamily(
            "imds_credentials_seconds_left",
            "Seconds until the served credentials expire (negative once expired)",
            labels=["role"])
        next_rotation = GaugeMetricFamily(
            "imds_next_rotation_seconds", "Seconds until the rotator plans to replace them",
            labels=["role"])
        for name, rotator in lab.rotators.items():
            current = rotator.current
            if current is not None:
                left.add_metric([name], current.expires_at - now)
            next_rotation.add_metric([name], rotator.next_refresh_at() - now)
        yield left
        yield next_rotation

        reloads = CounterMetricFamily(
            "imds_config_reloads", "New versions of a watched file (the role map, the Pod "
            "Identity associations), by setting and result: ok (in force), invalid, missing, "
            "unavailable (a new role got no credentials), error; all but ok keep the version "
            "in force", labels=["file", "result"])
        for (key, result), count in sorted(lab.config_reloads.items()):
            reloads.add_metric([key, result], count)
        yield reloads

        faults = GaugeMetricFamily("imds_faults_active", "Faults injected and active",
                                   labels=["kind"])
        for kind, count in sorted(Counter(f.kind for f in lab.faults.active).items()):
            faults.add_metric([kind], count)
        yield faults


def render(lab: Lab) -> bytes:
    """The exposition text for one lab."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LabCollector(lab))
    return generate_latest(registry)
