"""The container credential settings: task ids, associations and the full-URI token."""

from __future__ import annotations

import pytest

from imds.errors import ConfigError
from tests.conftest import make_config

ARN = "arn:aws:iam::111122223333:role/app"


class TestEcsTasks:
    def test_tasks_name_a_role_by_name_or_arn(self) -> None:
        config = make_config(ecs_task=["web=web-role", f"batch-1={ARN}"])
        assert ("web=web-role", f"batch-1={ARN}") == config.ecs_task

    @pytest.mark.parametrize("raw", ["web", "=role", "a/b=role", "web=rôle", "web=arn:aws:x"])
    def test_a_malformed_task_is_a_setting_error(self, raw: str) -> None:
        with pytest.raises(ConfigError, match="--ecs-task"):
            make_config(ecs_task=[raw])

    def test_the_sts_settings_apply_to_an_arn_task_without_role_arn(self) -> None:
        config = make_config(ecs_task=[f"web={ARN}"], sts_endpoint_url="http://127.0.0.1:9")
        assert "http://127.0.0.1:9" == config.sts_endpoint_url


class TestAssociations:
    def test_an_association_names_namespace_service_account_and_role(self) -> None:
        config = make_config(pod_identity_association=["shop/web=web-role"])
        assert ("shop/web=web-role",) == config.pod_identity_association

    @pytest.mark.parametrize("raw", ["shop=role", "Shop/web=role", "shop/web", "/web=role"])
    def test_a_malformed_association_is_a_setting_error(self, raw: str) -> None:
        with pytest.raises(ConfigError, match="--pod-identity-association"):
            make_config(pod_identity_association=[raw])


class TestContainerToken:
    @pytest.mark.parametrize("token", ["secret-token-with\nnewline", "secret-token-with\rreturn",
                                       "short", "token with spaces in it ok"])
    def test_a_token_an_sdk_would_refuse_is_refused_without_echoing_it(self,
                                                                         token: str) -> None:
        # [K-03] SDKs refuse tokens with CR or LF; a space would not survive header parsing.
        with pytest.raises(ConfigError) as caught:
            make_config(container_token=token)
        assert token not in str(caught.value)
        assert "--container-token" in str(caught.value)
