"""
Parsers and cross-checks for the STS settings (`--role-arn` and friends).

They check what STS itself would reject (ARN shapes, tag limits, policy size; the
characters of session names, external ids and source identities are patterns in
imds.config) so a mistake is a configuration error naming the setting, at load time, not
an AccessDenied or ValidationError from AWS minutes later. No boto3 here: loading a
configuration must stay cheap.
"""

from __future__ import annotations

import getpass
import json
import re
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

# STS limits, from the AssumeRole API reference (and botocore's sts service model).
DURATION_MIN = 900
DURATION_MAX = 43200
# "Role chaining limits your … session to a maximum of one hour."
CHAINED_DURATION_MAX = 3600
MAX_POLICY_ARNS = 10
MAX_SESSION_TAGS = 50
# The plain-text session policy may be at most 2,048 characters.
MAX_POLICY_CHARS = 2048

# IAM role names, the one rule for --role-name, the role map and role ARNs: the IAM API's
# RoleName, 1-64 characters matching [\w+=,.@-]+ with \w ASCII ("upper and lowercase
# alphanumeric characters ... _+=,.@-", CreateRole API reference; botocore's iam model).
_ROLE_NAME = r"[\w+=,.@-]{1,64}"
_ROLE_NAME_RE = re.compile(_ROLE_NAME, re.ASCII)
_ROLE_ARN = re.compile(
    r"arn:(?P<partition>aws(?:-[a-z]+)*):iam::(?P<account>\d{12}):"
    rf"role/(?P<path>(?:[\x21-\x7e]+/)?)(?P<name>{_ROLE_NAME})",
    re.ASCII,
)
_POLICY_ARN = re.compile(r"arn:aws(?:-[a-z]+)*:iam::(?:\d{12}|aws):policy/[\x21-\x7e]{1,512}")
_SESSION_NAME_BAD = re.compile(r"[^\w+=,.@-]", re.ASCII)
# STS tag keys and values: letters, spaces, numbers and _.:/=+-@ (\p{L}\p{Z}\p{N}).
_TAG_KEY = re.compile(r"[\w .:/=+\-@]{1,128}")
_TAG_VALUE = re.compile(r"[\w .:/=+\-@]{0,256}")


def role_name(raw: str) -> str:
    """An IAM role name: `app-role`, `Deploy@team.example` (1-64 of A-Z a-z 0-9 +=,.@_-)."""
    value = str(raw).strip()
    if not _ROLE_NAME_RE.fullmatch(value):
        raise ValueError(f"expected an IAM role name (1-64 letters, digits and +=,.@_-), "
                         f"got {raw!r}")
    return value


def role_arn(raw: str) -> str:
    """An IAM role ARN: `arn:aws:iam::111122223333:role/[path/]name`."""
    value = raw.strip()
    if not _ROLE_ARN.fullmatch(value):
        raise ValueError(f"expected a role ARN like arn:aws:iam::111122223333:role/name, "
                         f"got {raw!r}")
    return value


def split_role_arn(arn: str) -> tuple[str, str, str, str]:
    """(partition, account id, path with trailing `/` or "", role name) of a role ARN."""
    match = _ROLE_ARN.fullmatch(arn)
    if match is None:
        raise ValueError(f"not a role ARN: {arn!r}")
    return match["partition"], match["account"], match["path"], match["name"]


def policy_arn(raw: str) -> str:
    value = raw.strip()
    if not _POLICY_ARN.fullmatch(value):
        raise ValueError(f"expected a managed policy ARN like "
                         f"arn:aws:iam::aws:policy/ReadOnlyAccess, got {raw!r}")
    return value


def session_tag(raw: str) -> str:
    """A session tag `KEY=VALUE` (the value may be empty); printed back the same way."""
    key, sep, value = str(raw).partition("=")
    key, value = key.strip(), value.strip()
    if not sep or not _TAG_KEY.fullmatch(key) or not _TAG_VALUE.fullmatch(value):
        raise ValueError(f"expected a session tag KEY=VALUE (key 1-128, value 0-256 "
                         f"characters of letters, digits, spaces and _.:/=+-@), got {raw!r}")
    if key.lower().startswith("aws:"):
        raise ValueError(f"tag keys starting with aws: are reserved by AWS, got {raw!r}")
    return f"{key}={value}"


def parse_tags(tags: Sequence[str]) -> tuple[tuple[str, str], ...]:
    return tuple((key, value) for key, _, value in (tag.partition("=") for tag in tags))


def endpoint_url(raw: str) -> str:
    value = raw.strip()
    if not value:
        return ""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"expected an http(s) URL like https://sts.eu-west-1.amazonaws.com, "
                         f"got {mask_url(raw)!r}")
    return value


_USERINFO_PASSWORD = re.compile(r"(//[^/?#@\s:]*:)[^/?#@\s]*@")


def mask_passwords(text: str) -> str:
    """Every `//user:password@` in `text` (a URL inside an error message) as `//user:****@`."""
    return _USERINFO_PASSWORD.sub(r"\1****@", text)


def mask_url(url: str) -> str:
    """
    `url` with the password of its user info shown as `****` (`http://user:****@host/`),
    for `imds config` and error messages. Never fails: a URL too broken for urlsplit is
    cut the same way (the authority ends at the first `/`, `?` or `#`, as there).
    """
    head, sep, rest = url.partition("//")
    if not sep:
        return url
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    userinfo, at, host = rest[:end].rpartition("@")
    if not at or ":" not in userinfo:
        return url
    return f"{head}//{userinfo.partition(':')[0]}:****@{host}{rest[end:]}"


def read_policy(path: str) -> str:
    """The session policy in `path`, minified (STS counts its characters) [AssumeRole]."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read {path!r}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path!r} is not UTF-8 text") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path!r} is not JSON: {exc}") from None
    if not isinstance(document, dict) or "Statement" not in document:
        raise ValueError(f"{path!r} is not an IAM policy (a JSON object with a Statement)")
    minified = json.dumps(document, separators=(",", ":"), ensure_ascii=False)
    if len(minified) > MAX_POLICY_CHARS:
        raise ValueError(f"{path!r} is {len(minified)} characters even minified; STS accepts "
                         f"session policies of at most {MAX_POLICY_CHARS}")
    return minified


def policy_file(raw: str) -> str:
    """A session policy file: checked now, read again when the source is built."""
    if raw.strip():
        read_policy(raw)
    return raw


def sanitise_session_name(raw: str) -> str:
    """Make `raw` a valid RoleSessionName: allowed characters only, 2..64 long."""
    name = _SESSION_NAME_BAD.sub("-", raw)[:64]
    return name if len(name) >= 2 else (name + "-imds")[:64]


def default_session_name() -> str:
    """
    `imds-<local user>`: CloudTrail then shows who ran the server. (EC2 itself uses the
    instance id; `--role-session-name` can ask for that.)
    """
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry for this uid, as in many containers
        user = ""
    return sanitise_session_name(f"imds-{user}" if user else "imds")


def check(
    *,
    role_arns: Sequence[str],
    policy_arns: Sequence[str],
    session_tags: Sequence[str],
    sts_only: dict[str, object],
) -> None:
    """Cross-checks between STS settings; raises ValueError with the message for the user."""
    if not role_arns:
        given = [key for key, value in sts_only.items() if value]
        if given:
            verb = "applies" if len(given) == 1 else "apply"
            raise ValueError(f"{', '.join(given)} {verb} only with role_arn (--role-arn): "
                             "set the role to assume, or remove the setting")
        return
    if len(policy_arns) > MAX_POLICY_ARNS:
        raise ValueError(f"policy_arn: STS accepts at most {MAX_POLICY_ARNS} managed session "
                         f"policies, got {len(policy_arns)}")
    if len(session_tags) > MAX_SESSION_TAGS:
        raise ValueError(f"session_tag: STS accepts at most {MAX_SESSION_TAGS} session tags, "
                         f"got {len(session_tags)}")
    keys = [key.lower() for key, _ in parse_tags(session_tags)]
    duplicates = sorted({key for key in keys if keys.count(key) > 1})
    if duplicates:
        # STS rejects keys that differ only in case, too.
        raise ValueError(f"session_tag: each key may appear once (case-insensitively); "
                         f"repeated: {', '.join(duplicates)}")
