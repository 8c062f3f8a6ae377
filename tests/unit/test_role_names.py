"""
One role-name rule, IAM's, for `--role-name` and for the role names of a `--role-map` file:
the same names are accepted, and refused, by both.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import botocore.session
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imds.config import load
from imds.errors import ConfigError

NAMES = [
    "app", "imds-local-role", "a", "a" * 64, "A+=,.@_-z", "Deploy@team.example", "ROLE_9",
    "a" * 65, "rôle", "app role", "app/role", "app:role", "app*", "日本", "١٢٣", "ｒｏｌｅ",
    "role!", "ǅ",
]


def iam_accepts(name: str) -> bool:
    """IAM's own RoleName rule, from botocore's iam service model (Java regex: \\w is ASCII)."""
    shape = botocore.session.get_session().get_service_model("iam").shape_for("roleNameType")
    rule = shape.metadata
    return (rule["min"] <= len(name) <= rule["max"]
            and re.fullmatch(rule["pattern"], name, re.ASCII) is not None)


def accepted_by_flag(name: str) -> bool:
    try:
        load({"role_name": name}, {})
    except ConfigError:
        return False
    return True


def accepted_by_map(name: str, tmp_path: Path) -> bool:
    path = tmp_path / "roles.toml"
    # A JSON string (all ASCII, \uXXXX escapes) is a TOML basic string; astral characters,
    # which JSON would escape as surrogate pairs, are not generated.
    path.write_text(f'[clients]\n"10.0.0.1" = {json.dumps(name)}\n')
    try:
        load({"role_map": str(path)}, {})
    except ConfigError as exc:
        assert "neither an IAM role name" in str(exc)
        return False
    return True


class TestOneRoleNameRule:
    def test_flag_and_role_map_follow_iams_rule(self, tmp_path: Path) -> None:
        expected = [(name, iam_accepts(name), iam_accepts(name)) for name in NAMES]
        actual = [(name, accepted_by_flag(name), accepted_by_map(name, tmp_path))
                  for name in NAMES]
        assert expected == actual

    @settings(max_examples=150, deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(name=st.text(st.characters(codec="utf-8", max_codepoint=0xFFFF), max_size=70)
                | st.text("ab+=,.@_- /é", max_size=70))
    def test_the_flag_and_the_role_map_accept_the_same_names(
        self, name: str, tmp_path: Path
    ) -> None:
        assert accepted_by_flag(name) == accepted_by_map(name, tmp_path)
