"""
Reading a TOML file a setting names (`--config`, `--role-map`): every way it can fail is a
ConfigError that starts with the setting, so a bad file never ends in a traceback.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from imds.errors import ConfigError


def read_toml(path: str, where: str) -> dict[str, Any]:
    """The file's table; `where` names the setting and the file in each message."""
    try:
        with Path(path).open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{where} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"{where} is a directory; give a TOML file") from None
    except OSError as exc:
        raise ConfigError(f"{where} cannot be read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        # tomllib decodes the bytes as UTF-8 before parsing: binary content lands here.
        raise ConfigError(f"{where} is not UTF-8 text (TOML files are UTF-8)") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where} is not valid TOML: {exc}") from None
