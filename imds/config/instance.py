"""
Parsers for the structured instance settings: tags, network interfaces, spot notices,
maintenance events, the state directory.

Each structured setting has one text form usable on the command line and in an `IMDS_*`
variable (`key=value,key=value`), and the TOML file may give the same thing as a table.
Every parsed value prints back in its text form, so `imds config` shows what would be
accepted again.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# [U-01] EC2 accepts at most 16 KB of user data (raw, before base64).
USER_DATA_MAX = 16 * 1024

_MAC = re.compile(r"([0-9a-f]{2}:){5}[0-9a-f]{2}")
# [M-11] with tags in metadata enabled, keys may only use these characters.
_TAG_KEY = re.compile(r"[A-Za-z0-9+\-=.,_:@]{1,128}")
_FORBIDDEN_TAG_KEYS = frozenset({".", "..", "_index"})


def default_state_dir(env: Mapping[str, str]) -> str:
    """`$XDG_STATE_HOME/imds`, else `~/.local/state/imds` (the XDG base directory default)."""
    base = env.get("XDG_STATE_HOME") or ""
    if not base:
        home = env.get("HOME") or str(Path.home())
        base = str(Path(home) / ".local" / "state")
    return str(Path(base) / "imds")


def fields(raw: str | Mapping[str, Any], what: str, first: str = "") -> dict[str, str]:
    """
    `key=value,key=value` (or a TOML table) as a dict with `-` in its keys.

    When `first` is given, a leading item without `=` is the value of that key, so
    `system-reboot,not-before=…` means `code=system-reboot,not-before=…`.
    """
    if isinstance(raw, Mapping):
        return {str(k).replace("_", "-"): str(v) for k, v in raw.items()}
    out: dict[str, str] = {}
    for index, part in enumerate(p.strip() for p in str(raw).split(",")):
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep:
            if index == 0 and first:
                key, value = first, part
            else:
                raise ValueError(f"expected {what} as key=value,…; got {part!r} in {raw!r}")
        out[key.strip().replace("_", "-")] = value.strip()
    return out


def _reject_unknown(given: dict[str, str], allowed: set[str], what: str) -> None:
    unknown = sorted(set(given) - allowed)
    if unknown:
        raise ValueError(f"unknown {what} field(s) {', '.join(unknown)}; "
                         f"expected some of {', '.join(sorted(allowed))}")


def timestamp(raw: str) -> dt.datetime:
    """`2030-01-02T03:04:05Z` (any ISO 8601 with an offset) as an aware UTC datetime."""
    try:
        when = dt.datetime.fromisoformat(raw.strip())
    except ValueError:
        raise ValueError(f"expected a time like 2030-01-02T03:04:05Z, got {raw!r}") from None
    if when.tzinfo is None:
        raise ValueError(f"expected a time with a zone (…Z), got {raw!r}")
    return when.astimezone(dt.UTC).replace(microsecond=0)


def _stamp(when: dt.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def ipv4(raw: str) -> str:
    try:
        return str(ipaddress.IPv4Address(raw.strip()))
    except ValueError:
        raise ValueError(f"expected an IPv4 address, got {raw!r}") from None


def ipv6(raw: str) -> str:
    try:
        return str(ipaddress.IPv6Address(raw.strip()))
    except ValueError:
        raise ValueError(f"expected an IPv6 address, got {raw!r}") from None


def mac(raw: str) -> str:
    value = raw.strip().lower()
    if not _MAC.fullmatch(value):
        raise ValueError(f"expected a MAC like 0e:49:61:0f:c3:11, got {raw!r}")
    return value


# ------------------------------------------------------------------------------ tags


@dataclass(frozen=True, slots=True)
class Tag:
    key: str
    value: str

    def __str__(self) -> str:
        return f"{self.key}={self.value}"


def tag(raw: str) -> Tag:
    key, sep, value = str(raw).partition("=")
    if not sep or not key:
        raise ValueError(f"expected a tag as KEY=VALUE, got {raw!r}")
    return Tag(key, value)


def check_tag_keys(tags: tuple[Tag, ...]) -> None:
    """[M-11] the keys EC2 refuses once tags are exposed in instance metadata."""
    for item in tags:
        if item.key in _FORBIDDEN_TAG_KEYS or not _TAG_KEY.fullmatch(item.key):
            raise ValueError(
                f"tag key {item.key!r} cannot be exposed in instance metadata: use letters, "
                "digits and + - = . , _ : @ only (no spaces or /), not '.', '..' or '_index'"
            )


# ---------------------------------------------------------------- network interfaces


@dataclass(frozen=True, slots=True)
class InterfaceSpec:
    """An extra network interface (eth1…); eth0 comes from the top-level settings."""

    mac: str
    private_ip: str
    public_ip: str = ""
    ipv6: str = ""
    device_number: int | None = None

    def __str__(self) -> str:
        parts = [f"mac={self.mac}", f"private-ip={self.private_ip}"]
        if self.public_ip:
            parts.append(f"public-ip={self.public_ip}")
        if self.ipv6:
            parts.append(f"ipv6={self.ipv6}")
        if self.device_number is not None:
            parts.append(f"device-number={self.device_number}")
        return ",".join(parts)


def interface(raw: str | Mapping[str, Any]) -> InterfaceSpec:
    given = fields(raw, "a network interface")
    _reject_unknown(given, {"mac", "private-ip", "public-ip", "ipv6", "device-number"},
                    "network interface")
    if "mac" not in given or "private-ip" not in given:
        raise ValueError(f"a network interface needs mac= and private-ip=, got {raw!r}")
    device = given.get("device-number")
    if device is not None and not device.isdigit():
        raise ValueError(f"device-number must be a whole number, got {device!r}")
    return InterfaceSpec(
        mac=mac(given["mac"]),
        private_ip=ipv4(given["private-ip"]),
        public_ip=ipv4(given["public-ip"]) if given.get("public-ip") else "",
        ipv6=ipv6(given["ipv6"]) if given.get("ipv6") else "",
        device_number=int(device) if device is not None else None,
    )


# ------------------------------------------------------------------------------ spot

SPOT_ACTIONS = ("terminate", "stop", "hibernate")


@dataclass(frozen=True, slots=True)
class SpotAction:
    """[M-08] a pending Spot interruption; `time` None means two minutes after start."""

    action: str
    time: dt.datetime | None = None

    def __str__(self) -> str:
        return self.action + (f"@{_stamp(self.time)}" if self.time else "")


def spot_action(raw: str) -> SpotAction | None:
    text = str(raw).strip()
    if not text:
        return None
    action, sep, when = text.partition("@")
    if action not in SPOT_ACTIONS:
        raise ValueError(f"expected {'|'.join(SPOT_ACTIONS)}[@TIME], got {raw!r}")
    return SpotAction(action, timestamp(when) if sep else None)


# --------------------------------------------------------------- maintenance events

# [M-09] the event codes EC2 schedules (API InstanceStatusEvent) and their descriptions.
EVENT_DESCRIPTIONS = {
    "instance-reboot": "scheduled reboot",
    "system-reboot": "scheduled reboot",
    "system-maintenance": "scheduled maintenance",
    "instance-retirement": "scheduled retirement",
    "instance-stop": "scheduled stop",
}
# `active` events are in `scheduled`; the others only in `history`.
EVENT_STATES = ("active", "completed", "canceled")


@dataclass(frozen=True, slots=True)
class MaintenanceEvent:
    """One scheduled (or past) maintenance event; unset times are filled at startup."""

    code: str
    state: str = "active"
    not_before: dt.datetime | None = None
    not_after: dt.datetime | None = None
    description: str = ""
    event_id: str = ""

    def __str__(self) -> str:
        parts = [self.code, f"state={self.state}"]
        if self.not_before:
            parts.append(f"not-before={_stamp(self.not_before)}")
        if self.not_after:
            parts.append(f"not-after={_stamp(self.not_after)}")
        if self.description:
            parts.append(f"description={self.description}")
        if self.event_id:
            parts.append(f"event-id={self.event_id}")
        return ",".join(parts)


def maintenance_event(raw: str | Mapping[str, Any]) -> MaintenanceEvent:
    given = fields(raw, "a maintenance event", first="code")
    _reject_unknown(given, {"code", "state", "not-before", "not-after", "description",
                            "event-id"}, "maintenance event")
    code = given.get("code", "")
    if code not in EVENT_DESCRIPTIONS:
        raise ValueError(f"event code must be one of {', '.join(EVENT_DESCRIPTIONS)}, "
                         f"got {code!r}")
    state = given.get("state", "active")
    if state not in EVENT_STATES:
        raise ValueError(f"event state must be one of {', '.join(EVENT_STATES)}, got {state!r}")
    event_id = given.get("event-id", "")
    if event_id and not re.fullmatch(r"instance-event-[0-9a-f]{17}", event_id):
        raise ValueError(f"event-id must look like instance-event-0d59937288b749b32, "
                         f"got {event_id!r}")
    not_before = timestamp(given["not-before"]) if given.get("not-before") else None
    not_after = timestamp(given["not-after"]) if given.get("not-after") else None
    if not_before and not_after and not_after < not_before:
        raise ValueError(f"not-after is before not-before in {raw!r}")
    return MaintenanceEvent(code, state, not_before, not_after,
                            given.get("description", ""), event_id)


# ----------------------------------------------------------------------- public key


def openssh_key(raw: str) -> str:
    """[M-07] one OpenSSH public key line (`ssh-ed25519 AAAA… comment`)."""
    text = raw.strip()
    if text and not re.fullmatch(r"(ssh-[a-z0-9-]+|ecdsa-[a-z0-9-]+|sk-[a-z0-9@.-]+) "
                                 r"[A-Za-z0-9+/=]+( .*)?", text):
        raise ValueError(f"expected an OpenSSH public key line, got {raw[:40]!r}…")
    return text
