"""imds: a local EC2 instance metadata service that serves real, rotating credentials."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from imds.config import Config, load
    from imds.creds.model import Credentials
    from imds.server import ServerThread, start

__all__ = ["Config", "Credentials", "ServerThread", "load", "start"]
__version__ = "0.1.0"

# Imported on first use (PEP 562): the pytest plugin (imds.pytest_plugin) loads in every
# pytest run of an environment with imds installed, and importing it imports this package;
# that must not pull in aiohttp and the server.
_LAZY = {"Config": "imds.config", "load": "imds.config", "Credentials": "imds.creds.model",
         "ServerThread": "imds.server", "start": "imds.server"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'imds' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
