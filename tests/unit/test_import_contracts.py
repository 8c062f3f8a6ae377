"""
The import contracts of pyproject.toml ([tool.importlinter]) hold, and breaking one fails.

`scripts/test` runs `lint-imports` on the tree; these tests run it on copies of the
package with one import added, to show that an upward import and a cycle are caught.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint(tree: Path) -> subprocess.CompletedProcess[str]:
    """Run the project's contracts over the package found first on `tree`."""
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(tree / "pyproject.toml"), "--no-cache"],
        cwd=tree, env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=120, check=False,
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the package and its contracts, to break on purpose."""
    shutil.copytree(ROOT / "imds", tmp_path / "imds",
                    ignore=shutil.ignore_patterns("__pycache__", "*.html"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def add_import(module: Path, line: str) -> None:
    text = module.read_text()
    marker = "from __future__ import annotations\n"
    module.write_text(text.replace(marker, f"{marker}\n{line}\n", 1))


class TestImportContracts:
    def test_the_tree_keeps_every_contract(self, tree: Path) -> None:
        """The package as it is: every contract kept."""
        result = lint(tree)
        assert 0 == result.returncode, result.stdout + result.stderr
        assert "0 broken" in result.stdout

    def test_an_upward_import_from_the_core_breaks_the_layers(self, tree: Path) -> None:
        """The EC2 core importing the HTTP layer is refused, naming both modules."""
        add_import(tree / "imds" / "ec2" / "wire.py", "import imds.http.app  # noqa: F401")
        result = lint(tree)
        assert 0 != result.returncode
        assert "Layers: each imports only the layers below it BROKEN" in result.stdout
        assert "imds.ec2.wire -> imds.http.app" in result.stdout

    def test_a_cycle_within_a_package_is_refused(self, tree: Path) -> None:
        """A type-checking import back from the fast path to its server is still a cycle."""
        add_import(tree / "imds" / "http" / "fastpath.py",
                   "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                   "    from imds.http.aioserver import CappedServer  # noqa: F401")
        result = lint(tree)
        assert 0 != result.returncode
        assert "No import cycles between the modules or packages of any package BROKEN" \
            in result.stdout
        assert "No cycles are allowed in imds.http" in result.stdout

    def test_the_healthcheck_may_not_reach_aiohttp(self, tree: Path) -> None:
        """Configuration pulling in aiohttp breaks the healthcheck's contract too."""
        add_import(tree / "imds" / "config" / "endpoints.py", "import aiohttp  # noqa: F401")
        result = lint(tree)
        assert 0 != result.returncode
        assert "imds.health is not allowed to import aiohttp" in result.stdout
        assert "imds.config is not allowed to import aiohttp" in result.stdout
