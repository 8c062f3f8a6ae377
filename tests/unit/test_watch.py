"""The file watch on its own (imds.config.watch): real files, a fake apply, a fake clock."""

from __future__ import annotations

from pathlib import Path

import pytest

from imds.config.watch import ERROR, OK, RETRY_AFTER, UNAVAILABLE, FileWatch
from imds.errors import ConfigError, SourceError


class Recorder:
    def __init__(self) -> None:
        self.counted: list[tuple[str, str]] = []
        self.applied: list[bytes] = []
        self.fail: Exception | None = None
        self.now = 0.0

    def count(self, key: str, result: str) -> None:
        self.counted.append((key, result))

    async def apply(self, data: bytes) -> str:
        if self.fail is not None:
            raise self.fail
        self.applied.append(data)
        return "applied"


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


def watch_of(recorder: Recorder, path: Path) -> FileWatch:
    watch = FileWatch(0, recorder.count, monotonic=lambda: recorder.now)
    watch.add("role_map", str(path), path.read_bytes(), recorder.apply)
    return watch


class TestFileWatch:
    async def test_the_content_in_force_is_not_applied_again(
        self, recorder: Recorder, tmp_path: Path
    ) -> None:
        path = tmp_path / "f"
        path.write_bytes(b"one")
        watch = watch_of(recorder, path)
        await watch.check()
        path.write_bytes(b"two")
        await watch.check()
        await watch.check()
        assert [b"two"] == recorder.applied
        assert [("role_map", OK)] == recorder.counted

    async def test_a_version_whose_roles_got_no_credentials_is_tried_again_later(
        self, recorder: Recorder, tmp_path: Path
    ) -> None:
        """An STS outage heals without an edit, but STS is not asked at every poll."""
        path = tmp_path / "f"
        path.write_bytes(b"one")
        watch = watch_of(recorder, path)
        path.write_bytes(b"two")
        recorder.fail = SourceError("AccessDenied")
        await watch.check()
        recorder.now = RETRY_AFTER - 1
        await watch.check()
        assert [("role_map", UNAVAILABLE)] == recorder.counted
        recorder.fail = None
        recorder.now = RETRY_AFTER + 1
        await watch.check()
        assert [b"two"] == recorder.applied
        assert ("role_map", OK) == recorder.counted[-1]

    async def test_an_unexpected_failure_keeps_watching_and_counts_an_error(
        self, recorder: Recorder, tmp_path: Path
    ) -> None:
        path = tmp_path / "f"
        path.write_bytes(b"one")
        watch = watch_of(recorder, path)
        path.write_bytes(b"two")
        recorder.fail = RuntimeError("a bug")
        await watch.check()
        recorder.fail = ConfigError("role_map 'f': bad")
        path.write_bytes(b"three")
        await watch.check()
        recorder.fail = None
        path.write_bytes(b"four")
        await watch.check()
        assert [ERROR, "invalid", OK] == [result for _, result in recorder.counted]
        assert [b"four"] == recorder.applied
