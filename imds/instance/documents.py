"""
The JSON documents of the instance, printed the way EC2 prints them: the identity
document [D-03] [D-04], maintenance events [M-09] and Spot notices [M-08].

EC2 pretty-prints like Jackson's default printer: two-space indent, `"key" : value`,
arrays inline (`[ "x" ]`, `[ {` … `} ]`), no final newline [R-03].
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable

from imds.config import Config
from imds.config.instance import EVENT_DESCRIPTIONS, MaintenanceEvent
from imds.ec2.wire import iso8601
from imds.instance.network import stable_hex

# Defaults for maintenance events given without times: a week ahead (or behind, for
# history), with a window like the AWS documentation's example.
EVENT_LEAD = dt.timedelta(days=7)
EVENT_WINDOW = dt.timedelta(hours=2)


def _object(pairs: Iterable[tuple[str, object]]) -> str:
    # No field we print holds an array; EC2 would print one inline (`[ "x" ]`) [D-04].
    lines = [f"  {json.dumps(k)} : {json.dumps(v, ensure_ascii=False)}" for k, v in pairs]
    return "{\n" + ",\n".join(lines) + "\n}"


def identity_document(config: Config, pending: dt.datetime) -> bytes:
    """
    `dynamic/instance-identity/document` [D-03] [D-04]: exactly AWS's fields, alphabetical,
    two-space indent, `"key" : value`, arrays inline, no final newline. `region` and an
    RFC 3339 `pendingTime` are what Go v2 and Java take the region from [D-05].
    """
    fields: dict[str, object] = {
        "accountId": config.account_id,
        "architecture": config.architecture,
        "availabilityZone": config.zone,
        "billingProducts": None,
        "devpayProductCodes": None,
        "imageId": config.ami_id,
        "instanceId": config.instance_id,
        "instanceType": config.instance_type,
        "kernelId": None,
        "marketplaceProductCodes": None,
        "pendingTime": iso8601(pending),
        "privateIp": config.private_ip,
        "ramdiskId": None,
        "region": config.region,
        "version": "2017-09-30",
    }
    return _object(fields.items()).encode("utf-8")


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _event_time(when: dt.datetime) -> str:
    # [M-09] `21 Jan 2019 09:00:43 GMT`; month names fixed, not from the locale.
    when = when.astimezone(dt.UTC)
    return f"{when.day} {_MONTHS[when.month - 1]} {when.year} {when:%H:%M:%S} GMT"


def _event_pairs(event: MaintenanceEvent, instance_id: str,
                 started: dt.datetime) -> list[tuple[str, object]]:
    base = started.replace(microsecond=0)
    not_before = event.not_before or (
        base + EVENT_LEAD if event.state == "active" else base - EVENT_LEAD)
    not_after = event.not_after or not_before + EVENT_WINDOW
    description = event.description or EVENT_DESCRIPTIONS[event.code]
    if event.state != "active" and not event.description:
        # The EC2 API marks finished events this way ("[Completed] …").
        description = f"[{event.state.capitalize()}] {description}"
    event_id = event.event_id or "instance-event-" + stable_hex(
        instance_id, event.code, iso8601(not_before))
    # [M-09] EC2's field order.
    return [
        ("NotBefore", _event_time(not_before)),
        ("Code", event.code),
        ("Description", description),
        ("EventId", event_id),
        ("NotAfter", _event_time(not_after)),
        ("State", event.state),
    ]


def events_document(events: Iterable[MaintenanceEvent], instance_id: str,
                    started: dt.datetime) -> bytes:
    """
    `events/maintenance/{scheduled,history}` [M-09]: a JSON array printed the way EC2's
    other documents are (Jackson's default pretty printer: `[ {` … `} ]`). The body with
    no events is undocumented [Q-05]; Jackson prints an empty array as `[ ]`. [INF]
    """
    rendered = [_object(_event_pairs(event, instance_id, started)) for event in events]
    return ("[ " + ", ".join(rendered) + " ]" if rendered else "[ ]").encode("utf-8")


def spot_action_document(action: str, when: dt.datetime) -> bytes:
    """[M-08] the AWS documentation's exact form: compact JSON, a space after `:` and `,`."""
    return json.dumps({"action": action, "time": iso8601(when)}).encode("utf-8")
