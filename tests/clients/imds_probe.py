"""
A client run inside a test's network namespace or container; prints one JSON object.

    imds_probe.py boto3
        The real default credential chain, with the AWS variables the environment has
        (none: what an application with no AWS configuration gets):
        {"method": "iam-role", "access_key": "ASIA..."}; when the chain fails, no keys
        and the error: {"method": null, "access_key": null, "error": "Type: message"}.
    imds_probe.py raw --base http://169.254.169.254 [--token T] [--timeout S]
        The IMDSv2 sequence by hand (stdlib only): token PUT, role listing, credentials,
        reporting each status, and a token PUT that connects but gets no answer as
        "timeout" (what a hop limit too small looks like [T-22]).
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
from urllib.parse import urlsplit

TOKEN_TTL = "x-aws-ec2-metadata-token-ttl-seconds"
TOKEN = "x-aws-ec2-metadata-token"


def boto3_credentials() -> dict[str, object]:
    import boto3

    try:
        credentials = boto3.Session().get_credentials()
    except Exception as exc:  # what the application would see, reported for the test
        return {"method": None, "access_key": None, "error": f"{type(exc).__name__}: {exc}"}
    if credentials is None:
        return {"method": None, "access_key": None}
    return {"method": credentials.method, "access_key": credentials.access_key}


def request(base: str, method: str, path: str, headers: dict[str, str], timeout: float
            ) -> tuple[int | str, bytes]:
    parts = urlsplit(base)
    connection = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    try:
        try:
            connection.connect()
        except OSError as exc:
            return f"connect-error: {exc}", b""
        try:
            connection.request(method, path, headers=headers)
            response = connection.getresponse()
            return response.status, response.read()
        except TimeoutError:
            return "timeout", b""
        except (ConnectionError, http.client.HTTPException) as exc:
            return f"error: {type(exc).__name__}", b""
    finally:
        connection.close()


def raw(base: str, token: str | None, timeout: float, host: str | None) -> dict[str, object]:
    extra = {"Host": host} if host else {}
    out: dict[str, object] = {}
    if token is None:
        status, body = request(base, "PUT", "/latest/api/token",
                               {TOKEN_TTL: "21600", **extra}, timeout)
        out["put"] = status
        if status != 200:
            return out
        token = body.decode("ascii")
        out["token"] = token
    headers = {TOKEN: token, **extra}
    status, body = request(base, "GET", "/latest/meta-data/iam/security-credentials/",
                           headers, timeout)
    out["list"] = status
    if status != 200:
        return out
    role = body.decode()
    out["role"] = role
    status, body = request(base, "GET", f"/latest/meta-data/iam/security-credentials/{role}",
                           headers, timeout)
    out["credentials"] = status
    if status == 200:
        out["access_key"] = json.loads(body)["AccessKeyId"]
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="mode", required=True)
    sub.add_parser("boto3")
    raw_parser = sub.add_parser("raw")
    raw_parser.add_argument("--base", default="http://169.254.169.254")
    raw_parser.add_argument("--token")
    raw_parser.add_argument("--timeout", type=float, default=3.0)
    raw_parser.add_argument("--host-header")
    args = parser.parse_args()
    if args.mode == "boto3":
        result = boto3_credentials()
    else:
        result = raw(args.base, args.token, args.timeout, args.host_header)
    json.dump(result, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
