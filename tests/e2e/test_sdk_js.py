"""The AWS SDK for JavaScript v3 accepts imds as the EC2 metadata service."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from urllib.request import Request, urlopen

import pytest

from tests.support.processes import ROOT, clean_env, run, run_imds

JS = ROOT / "tests" / "js"


@pytest.fixture(scope="module")
def node_modules() -> Path:
    """Install the pinned SDK packages once (npm registry), or skip saying why."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        pytest.skip("node and npm are needed for the JavaScript SDK check")
    if not (JS / "node_modules" / "@aws-sdk" / "credential-providers").is_dir():
        result = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=JS,
                                capture_output=True, text=True, timeout=300, check=False)
        if result.returncode != 0:
            pytest.skip(f"npm ci failed, JavaScript SDK unavailable: {result.stderr[-500:]}")
    return JS / "node_modules"


@pytest.mark.e2e
@pytest.mark.parametrize("v1_disabled", [False, True], ids=["default", "v1-disabled"])
def test_js_default_chain_gets_the_served_keys_and_signs_a_call(
    node_modules: Path, empty_home: Path, moto_url: str, v1_disabled: bool
) -> None:
    """S-JS-01: PUT token, list the role (trimmed), fetch credentials; S-JS-05 with v1 off."""
    node = shutil.which("node")
    assert node is not None
    with run_imds(env=clean_env(empty_home)) as imds:
        extra = {"AWS_EC2_METADATA_SERVICE_ENDPOINT": imds.url}
        if v1_disabled:
            extra["AWS_EC2_METADATA_V1_DISABLED"] = "true"
        env = clean_env(empty_home, **extra)
        env["PATH"] = f"{Path(node).parent}:{env['PATH']}"
        result = run([node, str(JS / "default_chain.mjs"), moto_url], env)
        served = served_document(imds.url)
    assert 0 == result.returncode, result.stderr
    answer = json.loads(result.stdout)
    assert served["AccessKeyId"] == answer["accessKeyId"]
    assert served["Expiration"].replace("Z", ".000Z") == answer["expiration"]
    assert answer["account"]


def served_document(url: str) -> dict[str, str]:
    """What imds serves right now, read the way any IMDSv2 client reads it."""
    ttl = {"X-aws-ec2-metadata-token-ttl-seconds": "60"}
    with urlopen(Request(url + "/latest/api/token", method="PUT", headers=ttl)) as r:
        token = r.read().decode()
    base = url + "/latest/meta-data/iam/security-credentials/"
    headers = {"X-aws-ec2-metadata-token": token}
    with urlopen(Request(base, headers=headers)) as r:
        role = r.read().decode()
    with urlopen(Request(base + role, headers=headers)) as r:
        return json.loads(r.read())  # type: ignore[no-any-return]
