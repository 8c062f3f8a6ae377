"""
The README's and the docs' code blocks, run as a newcomer runs them, in order.

Blocks are read with pytest-codeblocks (`extract_from_file`), and marked in its syntax: an
HTML comment `<!--pytest.mark.skip(reason="…")-->` on the line before a block that cannot
run here, saying why, and `<!--pytest.mark.excerpt_of("path")-->` before a block quoted from
a file of the repository (checked, line by line, instead of run). The plugin runs each
block alone; docs pages are sequences instead (start a server in one terminal, use it in a
second), so each page runs here as one bash session:

- `sh`/`bash` blocks are sourced in order, so `source .venv/bin/activate` and `export`
  carry over to the blocks after them, as in a terminal. `set -e`: any failing command
  fails the page.
- A block whose last command is `imds serve`, `scripts/serve` or `moto_server` is what the
  docs put in a terminal of its own: it runs in the background until the page ends (a
  later imds replaces an earlier one, as Ctrl-C and a new start would), and the next block
  runs once it prints that it listens.
- The docs' fixed ports (1338, 1339, 5055) become free ones; the page runs in a scratch
  folder that links to the repository's files, with its own HOME and state directory and
  no AWS setting.
- `python` blocks run with the page's `python`; a block that defines `test_` functions runs
  under pytest, where the `imds_server` fixture comes from the installed plugin.

The README runs with a PATH that lacks `.venv/bin`, as a newcomer's terminal does; the docs
pages assume what the README says once (`.venv/bin` on PATH).
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pytest_codeblocks import CodeBlock, extract_from_file

from tests.support.processes import BIN, ROOT

pytestmark = pytest.mark.e2e

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUNNABLE = ("sh", "bash", "python")
# What the docs leave running in a terminal of its own, and what it prints once it listens.
SERVERS = {"imds serve": "imds", "scripts/serve": "imds", "moto_server": "moto"}
READY = r"^imds: serving role|Running on http"
FIXED_PORTS = ("1338", "1339", "5055")


@dataclass
class Block:
    page: str
    code: CodeBlock
    skip: str | None = None
    excerpt_of: str | None = None

    @property
    def where(self) -> str:
        return f"{self.page} line {self.code.lineno}"


def blocks(page: Path) -> list[Block]:
    """The page's blocks with their marks, evaluated as pytest-codeblocks evaluates them."""
    found = []
    for code in extract_from_file(page):
        block = Block(str(page.relative_to(ROOT)), code)
        for text in code.marks:
            # The plugin's own semantics: a mark is a pytest.mark expression. The docs are
            # this repository's own files.
            mark = eval(text, {"pytest": pytest, "sys": sys}).mark  # noqa: S307
            if mark.name == "skip":
                block.skip = mark.kwargs.get("reason") or (mark.args or [""])[0]
                assert block.skip, f"{block.where}: a skipped block must say why"
            elif mark.name == "excerpt_of":
                block.excerpt_of = mark.args[0]
            else:
                raise AssertionError(f"{block.where}: unsupported mark {text}")
        found.append(block)
    return found


def server_kind(code: str) -> str | None:
    """`imds`/`moto` when the block's last command keeps a terminal busy, else None."""
    lines = [line for line in code.replace("\\\n", " ").splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        return None
    words = shlex.split(lines[-1], comments=True)
    while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
        words.pop(0)  # VAR=value before the command
    command = " ".join(words[:2])
    for start, kind in SERVERS.items():
        if command.startswith(start):
            return kind
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


PRELUDE = r"""
set -eo pipefail
declare -A __servers=()
__stop() {  # $1: a kind, or every server when empty
  local kind
  for kind in "${!__servers[@]}"; do
    if [ -z "$1" ] || [ "$kind" = "$1" ]; then
      kill -TERM -- "-${__servers[$kind]}" 2>/dev/null || true
      wait "${__servers[$kind]}" 2>/dev/null || true
      unset "__servers[$kind]"
    fi
  done
}
trap '__stop ""' EXIT
__serve() {  # $1: kind, $2: block file, $3: log; returns once it listens
  __stop "$1"
  # A session of its own (setsid, in place: the child is no group leader), so that
  # stopping it stops what it started too, as Ctrl-C in its terminal would.
  setsid bash "$2" > "$3" 2>&1 < /dev/null &
  __servers[$1]=$!
  echo "$!" >> "$__PIDS"
  local i
  for i in $(seq 300); do
    grep -qE '__READY__' "$3" && return 0
    if ! kill -0 "${__servers[$1]}" 2>/dev/null; then
      echo "the server block exited:" >&2; cat "$3" >&2; return 1
    fi
    sleep 0.1
  done
  echo "the server block did not listen within 30 s:" >&2; cat "$3" >&2; return 1
}
""".replace("__READY__", READY)


def script(page: list[Block], work: Path, ports: dict[str, str]) -> str:
    """One bash session for the page: each block in turn, servers in the background."""
    lines = [f"__PIDS={shlex.quote(str(work / 'servers.pid'))}", PRELUDE]
    for block in page:
        code = block.code
        if code.syntax not in RUNNABLE or block.skip or block.excerpt_of:
            continue
        text = code.code
        for fixed, free in ports.items():
            text = re.sub(rf"(?<!\d){fixed}(?!\d)", free, text)
        name = f"block-{code.lineno}"
        # On a line of its own even after output without a final newline.
        lines.append(f"printf '\\n=== %s\\n' '{block.where}' >&2")
        if code.syntax == "python":
            if re.search(r"^def test_", text, re.M):
                path = work / f"test_{name.replace('-', '_')}.py"
                path.write_text(text)
                lines.append("python -m pytest -q -p no:cacheprovider -p no:hypothesispytest "
                             f"{shlex.quote(str(path))}")
            else:
                path = work / f"{name}.py"
                path.write_text(text)
                lines.append(f"python {shlex.quote(str(path))}")
            continue
        path = work / f"{name}.sh"
        path.write_text(text)
        kind = server_kind(text)
        if kind:
            lines.append(f"__serve {kind} {shlex.quote(str(path))} "
                         f"{shlex.quote(str(work / (name + '.log')))}")
        else:
            lines.append(f"source {shlex.quote(str(path))}")
    return "\n".join(lines) + "\n"


def scratch_checkout(folder: Path) -> Path:
    """
    A folder that looks like the repository (links to its files) for files blocks write.
    `scripts/setup` runs in the repository first: the README's `scripts/serve` runs it
    again in the folder, where an install it found due would point .venv at the folder.
    """
    subprocess.run([str(ROOT / "scripts" / "setup")], check=True, capture_output=True,
                   timeout=600)
    folder.mkdir()
    for entry in ROOT.iterdir():
        if entry.name not in (".git",):
            (folder / entry.name).symlink_to(entry)
    return folder


def page_env(page: Path, home: Path, ports: dict[str, str]) -> dict[str, str]:
    venv = str(BIN)
    path = [p for p in os.environ.get("PATH", "/usr/bin:/bin").split(os.pathsep)
            if p and Path(p).resolve() != BIN.resolve()]
    if page.name != "README.md":
        path.insert(0, venv)  # what the README's "Run it" says to do once per terminal
    (home / ".aws").mkdir(parents=True)
    env = {
        "PATH": os.pathsep.join(path),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        # A block that runs the test suite (marked skip) must never run this test again.
        "DOCS_CODE_BLOCKS_RUNNING": "1",
        "AWS_CONFIG_FILE": str(home / ".aws" / "config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(home / ".aws" / "credentials"),
        "IMDS_STATE_DIR": str(home / "imds-state"),
        # `imds serve` without --port gets the free ones the docs' 1338 and 1339 became.
        "IMDS_PORT": ports["1338"],
        "IMDS_CONTROL_PORT": ports["1339"],
        # The inner pytest runs of python blocks: pytest-asyncio wants this set.
        "PYTEST_ADDOPTS": "-o asyncio_default_fixture_loop_scope=function",
    }
    for name in ("AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        Path(env[name]).touch()
    return env


def stop_page(process: subprocess.Popen[str], work: Path) -> None:
    """
    A page still running: its shell's process group and the servers it started (each a
    session of its own). A page that ended stopped its servers itself (its EXIT trap).
    """
    pids = work / "servers.pid"
    servers = [int(p) for p in pids.read_text().split()] if pids.exists() else []
    for group in [*servers, process.pid]:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)


def pages_with_blocks() -> Iterator[pytest.ParameterSet]:
    for page in PAGES:
        if any(b.code.syntax in RUNNABLE or b.excerpt_of for b in blocks(page)):
            yield pytest.param(page, id=page.name)


class TestDocsCodeBlocks:
    @pytest.mark.parametrize("page", list(pages_with_blocks()))
    def test_every_block_runs_as_written(
        self, page: Path, tmp_path: Path
    ) -> None:
        """Each runnable block of the page succeeds, in order, against servers it started."""
        if os.environ.get("DOCS_CODE_BLOCKS_RUNNING"):
            pytest.skip("a docs block ran the suite that runs the docs blocks")
        found = blocks(page)
        for block in found:
            if block.excerpt_of:
                quoted = [line for line in block.code.code.splitlines() if line.strip()]
                source = (ROOT / block.excerpt_of).read_text().splitlines()
                at = 0
                for line in quoted:
                    assert line in source[at:], (
                        f"{block.where}: {line!r} is not in {block.excerpt_of} (in order)")
                    at = source.index(line, at) + 1
        ports = {fixed: str(free_port()) for fixed in FIXED_PORTS}
        work = tmp_path / "blocks"
        work.mkdir()
        checkout = scratch_checkout(tmp_path / "repo")
        env = page_env(page, tmp_path / "home", ports)
        (work / "page.sh").write_text(script(found, work, ports))
        process = subprocess.Popen(["bash", str(work / "page.sh")], cwd=checkout, env=env,
                                   stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, start_new_session=True)
        try:
            output, _ = process.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            stop_page(process, work)
            output, _ = process.communicate(timeout=10)
            output += "\n(stopped after 120 s)"
        started = [line[4:] for line in output.splitlines() if line.startswith("=== ")]
        assert 0 == process.returncode, (
            f"failed in {started[-1] if started else page.name} "
            f"(ports {ports}):\n{output[-6000:]}")
        runnable = [b.where for b in found
                    if b.code.syntax in RUNNABLE and not (b.skip or b.excerpt_of)]
        assert runnable == started
