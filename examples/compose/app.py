"""
The example application of compose.yaml: an AWS client with no AWS configuration at all.

No keys, no profile, no config file, no endpoint or region variable: like an application on
EC2, it finds its credentials and its region at http://169.254.169.254 through boto3's
default chain. Every round it makes a new boto3 session (so each round goes through the
chain and reaches the metadata service), calls STS GetCallerIdentity, and prints one line:
the last four characters of the key it signed with and who STS says the caller is. Watch
the key change as imds rotates it.

`--sts-url` is where "AWS" is: compose.yaml points it at a moto server (which accepts any
well-formed signature, so locally minted keys work there); without it the call goes to the
real STS, which is what compose.sts.yaml does with a real role.
"""

from __future__ import annotations

import argparse
import sys
import time

import boto3
import botocore.exceptions
import botocore.utils


def region() -> str | None:
    # As EC2 applications do: the region of the instance, from the metadata service [S-PY-09].
    return botocore.utils.InstanceMetadataRegionFetcher().retrieve_region()


def one_round(sts_url: str | None) -> str:
    session = boto3.Session()
    credentials = session.get_credentials()
    if credentials is None:
        return "no credentials yet (is the metadata service up?)"
    frozen = credentials.get_frozen_credentials()
    where = region()
    if where is None:
        return "no region from the metadata service yet"
    client = session.client("sts", region_name=where, endpoint_url=sts_url or None)
    arn = client.get_caller_identity()["Arn"]
    # The last four characters only: enough to see rotation, never a usable key id.
    return f"key=…{frozen.access_key[-4:]} source={credentials.method} region={where} " \
           f"caller={arn} ok"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--sts-url", default="", help="STS endpoint (default: the real one)")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between rounds")
    parser.add_argument("--rounds", type=int, default=0, help="stop after N rounds (0: never)")
    args = parser.parse_args()
    done = 0
    while args.rounds == 0 or done < args.rounds:
        done += 1
        try:
            line = one_round(args.sts_url)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            # Keep going: the server or "AWS" may still be starting (compose starts
            # everything at once and health checks are not enforced everywhere).
            line = f"failed: {exc}"
        print(f"round {done}: {line}", flush=True)
        time.sleep(args.interval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
