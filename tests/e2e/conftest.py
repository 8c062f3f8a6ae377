"""Fixtures the end-to-end SDK tests share."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.processes import ROOT

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
