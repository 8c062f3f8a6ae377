"""
A ConfigMap volume, laid out and updated as kubelet's atomic writer does it [K-15]: the
files live in a timestamped directory, `..data` links to it and each file name links
through `..data`; an update writes a new directory, points `..data_tmp` at it, renames that
over `..data` and removes the old directory.
"""

from __future__ import annotations

import shutil
from pathlib import Path


class Volume:
    """A directory laid out and updated as kubelet does a ConfigMap volume."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.versions = 0
        root.mkdir(exist_ok=True)

    def path(self, name: str) -> str:
        return str(self.root / name)

    def write(self, **files: str) -> None:
        """Publish a new version holding exactly `files` (name = content)."""
        self.versions += 1
        version = self.root / f"..2026_12_02_21_00_00.{self.versions:09d}"
        version.mkdir()
        for name, text in files.items():
            (version / name).write_text(text)
        data = self.root / "..data"
        old = data.resolve() if data.is_symlink() else None
        tmp = self.root / "..data_tmp"
        tmp.symlink_to(version.name)
        tmp.rename(data)
        for name in files:
            link = self.root / name
            if not link.is_symlink():
                link.symlink_to(f"..data/{name}")
        # Names no longer in the ConfigMap lose their link, as kubelet removes them.
        for link in self.root.iterdir():
            if link.is_symlink() and link.name not in files and not link.name.startswith(".."):
                link.unlink()
        if old is not None:
            shutil.rmtree(old)


def role_map(**clients: str) -> str:
    return "[clients]\n" + "".join(f'"{address}" = "{role}"\n'
                                   for address, role in clients.items())
