"""imds: a local EC2 instance metadata service that serves real, rotating credentials."""

from __future__ import annotations

from imds.config import Config, load
from imds.credentials import Credentials
from imds.server import ServerThread, start

__all__ = ["Config", "Credentials", "ServerThread", "load", "start"]
__version__ = "0.1.0"
