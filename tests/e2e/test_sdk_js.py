"""The AWS SDK for JavaScript v3 accepts imds as the EC2 metadata service."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.support.metadata_client import served_document
from tests.support.processes import ROOT, clean_env, run, run_imds

JS = ROOT / "tests" / "js"


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
