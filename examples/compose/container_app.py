"""
The example application of compose.ecs.yaml and compose.pod-identity.yaml: an AWS client
configured only with the container credential variables, as ECS and EKS set them.

It sets nothing itself: boto3's default chain finds the variables and tries the container
provider before anything else [E-09]:
- ECS task role: `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI`, fetched from 169.254.170.2
  without a token [K-01];
- EKS Pod Identity: `AWS_CONTAINER_CREDENTIALS_FULL_URI` at 169.254.170.23 and
  `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`, the service account token sent as the
  `Authorization` header, re-read on each fetch [K-03, K-06].

It checks that the credentials came from that provider (boto3 calls it `container-role`),
prints the access key id and exits 0; 1 if none came within `--timeout` seconds.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import boto3
import botocore.exceptions

EXPECTED_METHOD = "container-role"


def token_file_ready() -> bool:
    # Pod Identity: the token is mounted from another container, which may not have written
    # it yet; botocore would fail on a missing file rather than wait for it.
    path = os.environ.get("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE")
    return path is None or (os.path.isfile(path) and os.path.getsize(path) > 0)


def attempt() -> str:
    """The access key id, or raises: the file, the server or the answer is not there yet."""
    if not token_file_ready():
        raise LookupError("the service account token file is not there yet")
    # A new session each time: a failed default chain is not cached between attempts.
    credentials = boto3.Session().get_credentials()
    if credentials is None:
        raise LookupError("no credentials from the default chain")
    if credentials.method != EXPECTED_METHOD:
        # Another provider answered: the container variables were not what the chain used.
        raise SystemExit(f"credentials came from {credentials.method!r}, "
                         f"not {EXPECTED_METHOD!r}")
    return str(credentials.get_frozen_credentials().access_key)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds to keep trying before giving up")
    args = parser.parse_args()
    deadline = time.monotonic() + args.timeout
    while True:
        try:
            key = attempt()
        except (LookupError, botocore.exceptions.BotoCoreError) as exc:
            # Health checks are not enforced everywhere (podman without systemd), so
            # `depends_on` only orders the start: the server may not be answering yet.
            if time.monotonic() > deadline:
                print(f"no credentials after {args.timeout:g}s: {exc}", file=sys.stderr)
                return 1
            print(f"waiting: {exc}", flush=True)
            time.sleep(1)
            continue
        print(f"credentials: method={EXPECTED_METHOD} access_key_id={key}", flush=True)
        return 0


if __name__ == "__main__":
    sys.exit(main())
