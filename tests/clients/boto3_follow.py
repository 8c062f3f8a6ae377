"""
A long-lived boto3 client, run as its own process by the end-to-end tests.

It resolves credentials through the real default chain (no keys, only the IMDS endpoint
variable), then calls STS GetCallerIdentity on `--api-url` every `--interval` seconds for
`--seconds`, printing one JSON line per call: the key id suffix used and whether it worked.

botocore refreshes IMDS credentials 15 minutes before expiry and, for credentials closer
to expiry than that, gives them a local expiry 17-25 minutes out (S-PY-07, S-PY-08): on a real
clock a short-lived credential is re-fetched only every 2-10 minutes. `--time-scale`
shrinks exactly those windows (the advisory/mandatory refresh timeouts and the extension
jitter) so that rotation is visible in seconds; every request still goes through the SDK's
own fetcher, refresh lock and signer.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time

import boto3
import botocore.credentials
import botocore.utils


def scale_botocore(scale: float) -> None:
    creds = botocore.credentials.RefreshableCredentials
    creds._advisory_refresh_timeout = int(creds._advisory_refresh_timeout * scale)
    creds._mandatory_refresh_timeout = int(creds._mandatory_refresh_timeout * scale)
    botocore.credentials._DEFAULT_ADVISORY_REFRESH_TIMEOUT = creds._advisory_refresh_timeout

    class ScaledRandom(random.Random):
        def randint(self, a: int, b: int) -> int:
            return max(0, round(super().randint(a, b) * scale))

    botocore.utils.random = ScaledRandom()  # type: ignore[attr-defined]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--api-url", required=True)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--interval", type=float, default=0.25)
    parser.add_argument("--time-scale", type=float, default=1.0)
    args = parser.parse_args()
    if args.time_scale != 1.0:
        scale_botocore(args.time_scale)

    session = boto3.Session(region_name="us-east-1")
    credentials = session.get_credentials()
    if credentials is None:
        print(json.dumps({"error": "no credentials"}), flush=True)
        return 1
    print(json.dumps({"method": credentials.method}), flush=True)
    sts = session.client("sts", endpoint_url=args.api_url)
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        key = credentials.get_frozen_credentials().access_key
        try:
            sts.get_caller_identity()
        except Exception as exc:  # report every failure, the test counts them
            print(json.dumps({"key": key[-4:], "ok": False, "error": type(exc).__name__}),
                  flush=True)
        else:
            print(json.dumps({"key": key[-4:], "ok": True}), flush=True)
        time.sleep(args.interval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
