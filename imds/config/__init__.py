"""
Configuration: CLI > `IMDS_*` environment > TOML file > defaults, into one frozen `Config`.

    model.py      the Config dataclass and its defaults
    options.py    the option table, one entry a setting, and the value parsers
    load.py       loading, the checks across settings, reading the files settings name
    endpoints.py  listening addresses; rolemap.py the role map file;
    instance.py   instance settings (tags, interfaces, events); sts.py STS settings

Never imports aiohttp or boto3 (README, "Where things are"): the container healthcheck
reads the configuration too, and must start in milliseconds.
"""

from __future__ import annotations

from imds.config.load import (
    INSTANCE_ID_FILE,
    account_mismatch,
    describe,
    finish,
    load,
    option_names,
    read_file,
    saved_instance_id,
)
from imds.config.model import CONTROL_PORT, DEFAULT_ACCOUNT_ID, ENV_PREFIX, Config
from imds.config.options import GROUPS, OPTIONS, Option

__all__ = [
    "CONTROL_PORT",
    "DEFAULT_ACCOUNT_ID",
    "ENV_PREFIX",
    "GROUPS",
    "INSTANCE_ID_FILE",
    "OPTIONS",
    "Config",
    "Option",
    "account_mismatch",
    "describe",
    "finish",
    "load",
    "option_names",
    "read_file",
    "saved_instance_id",
]
