"""
STS and botocore failures, explained: each becomes a one-paragraph SourceError that says
what went wrong and what to run or change, without a secret in it.
"""

from __future__ import annotations

from typing import Any

from imds.config import sts
from imds.creds.sources.sts_request import AssumeRoleSettings
from imds.errors import SourceError

# Codes STS answers when trying again later can help (besides any 5xx).
_TRANSIENT_CODES = frozenset({
    "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequestsException",
    "RequestThrottled", "ServiceUnavailable", "InternalFailure", "InternalError",
    "IDPCommunicationError", "RequestTimeout", "RequestTimeoutException",
})
_BAD_BASE_CODES = frozenset({
    "InvalidClientTokenId", "SignatureDoesNotMatch", "UnrecognizedClientException",
    "IncompleteSignature", "MissingAuthenticationToken", "InvalidAccessKeyId",
})
_EXPIRED_CODES = frozenset({"ExpiredToken", "ExpiredTokenException", "RequestExpired"})

NO_CREDENTIALS = (
    "no AWS credentials were found to call sts:AssumeRole with. imds uses boto3's standard "
    "chain: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN) in the "
    "environment, or a profile from ~/.aws/config and ~/.aws/credentials chosen with "
    "--profile or AWS_PROFILE (keys, sso_session after `aws sso login`, credential_process, "
    "role_arn with source_profile or credential_source); instance metadata is deliberately "
    "not consulted, since that would be this service itself. Run `aws sts "
    "get-caller-identity` in the same shell to check what boto3 will find."
)


def explain(exc: BaseException, arn: str, previous: str, settings: AssumeRoleSettings,
            endpoint: str) -> SourceError:
    """
    A botocore failure as a one-paragraph SourceError a user can act on: `arn` is the role
    being assumed, `previous` the role whose session asked ("" for the base identity), and
    `endpoint` the STS endpoint asked. botocore's own messages quote the endpoint URL, so
    a password in it is masked in the whole message.
    """
    error = _explain(exc, arn, previous, settings, endpoint)
    return SourceError(sts.mask_passwords(str(error)))


def _explain(exc: BaseException, arn: str, previous: str, settings: AssumeRoleSettings,
             endpoint: str) -> SourceError:
    from botocore import exceptions as bce

    caller = (f"with the session of {previous}" if previous
              else "with your base credentials")
    profile = f" --profile {settings.profile}" if settings.profile else ""
    if isinstance(exc, bce.NoCredentialsError):
        return SourceError(NO_CREDENTIALS)
    if isinstance(exc, bce.ProfileNotFound):
        return SourceError(
            f"the AWS profile {settings.profile or exc.kwargs.get('profile')!r} is "
            "not defined in the AWS config or credentials file (AWS_CONFIG_FILE, "
            "AWS_SHARED_CREDENTIALS_FILE, ~/.aws/); check --profile and AWS_PROFILE, or "
            "`aws configure list-profiles`"
        )
    if isinstance(exc, bce.SSOError | bce.TokenRetrievalError):
        return SourceError(
            f"your base credentials come from AWS SSO and its session is missing or "
            f"expired ({exc}); run `aws sso login{profile}`, then imds picks it up by itself"
        )
    if isinstance(exc, bce.PartialCredentialsError | bce.InvalidConfigError):
        return SourceError(f"the AWS credentials configuration is incomplete: {exc}")
    if isinstance(exc, bce.CredentialRetrievalError):
        return SourceError(f"could not get your base credentials: {exc}")
    if isinstance(exc, bce.EndpointConnectionError | bce.HTTPClientError
                  | bce.ConnectionError):
        return SourceError(
            f"cannot reach STS at {endpoint} ({exc}); check the network (and "
            f"HTTPS_PROXY), --region {settings.region}, or --sts-endpoint-url"
        )
    if isinstance(exc, bce.ParamValidationError):
        return SourceError(f"STS parameters rejected before sending: {exc}")
    if isinstance(exc, bce.ClientError):
        return _explain_client_error(exc, arn, caller, profile, settings)
    if isinstance(exc, bce.BotoCoreError):
        return SourceError(f"sts:AssumeRole of {arn} failed: {exc}")
    if isinstance(exc, ImportError):
        return SourceError(f"boto3 is needed for --role-arn: {exc}")
    return SourceError(f"sts:AssumeRole of {arn} failed: {type(exc).__name__}: {exc}")

def _explain_client_error(
    exc: Any, arn: str, caller: str, profile: str, settings: AssumeRoleSettings
) -> SourceError:
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    message = str(error.get("Message", "")).strip().rstrip(".")
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    said = f"{code}: {message}" if message else code
    if code == "AccessDenied":
        hints = []
        if settings.external_id and not caller.startswith("with the session"):
            hints.append("if the trust policy asks for sts:ExternalId, check --external-id")
        if settings.tags:
            hints.append("session tags also need sts:TagSession in the trust policy")
        if settings.source_identity:
            hints.append("a source identity also needs sts:SetSourceIdentity there")
        extra = f" ({'; '.join(hints)})" if hints else ""
        return SourceError(
            f"STS denied sts:AssumeRole of {arn} {caller} ({said}). The role's trust "
            f"policy must allow this caller as a principal, and the caller's own "
            f"policies must allow sts:AssumeRole on the role{extra}. For the role to "
            f"work as an instance profile on EC2 too, its trust policy should also "
            f"allow the service principal ec2.amazonaws.com (--check-trust reports it)."
        )
    if code in _BAD_BASE_CODES:
        return SourceError(
            f"STS does not accept the credentials used {caller} ({said}): they are "
            f"wrong, deactivated or for another partition; check `aws sts "
            f"get-caller-identity{profile}`"
        )
    if code in _EXPIRED_CODES:
        return SourceError(
            f"the credentials used {caller} have expired ({said}); refresh them (for "
            f"SSO: `aws sso login{profile}`)"
        )
    if code == "RegionDisabledException":
        return SourceError(
            f"STS is not activated in region {settings.region} ({said}); activate "
            f"it in the IAM account settings or choose another --region"
        )
    if code == "ValidationError" and "DurationSeconds" in message:
        return SourceError(
            f"STS refused the session duration for {arn} ({said}). --duration may not "
            f"exceed the role's MaxSessionDuration, and sessions assumed with role "
            f"credentials (chains, or a profile that is itself a role) at most 3600"
        )
    if code in ("MalformedPolicyDocument", "MalformedPolicyDocumentException",
                "PackedPolicyTooLarge", "PackedPolicyTooLargeException"):
        return SourceError(
            f"STS rejected the session policy or tags for {arn} ({said}); check "
            f"--policy-file, --policy-arn and --session-tag"
        )
    if code in _TRANSIENT_CODES or status >= 500:
        return SourceError(f"STS could not serve sts:AssumeRole of {arn} now ({said})")
    return SourceError(f"STS refused sts:AssumeRole of {arn} {caller} ({said})")


def short(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and "Error" in response:
        return str(response["Error"].get("Code", type(exc).__name__))
    return f"{type(exc).__name__}: {exc}"
