"""One S3 bucket for the ``s3`` sink, through boto3: finding the bucket and its region, uploading
objects, and saying what each failure means.

As Antrea's uploader does, :meth:`Bucket.connect` asks S3 where the bucket is (``HeadBucket`` with
the configured region as a hint) and uses that region from then on. A bucket that does not exist,
refused access or missing credentials are errors naming the key to change; an endpoint that cannot
be reached or answers 5xx is a :class:`RetryableError`. Every failed upload is retryable: nothing in
the records can make S3 refuse them, and the sink keeps them until S3 takes them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, ProfileNotFound

from flowscope.core.errors import ConfigError, ConfigIssue, RetryableError

_CREDENTIALS_HELP = (
    "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN), or AWS_WEB_IDENTITY_TOKEN_FILE, "
    "or give credentialsFile"
)
_AUTH_CODES = frozenset(
    ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken", "403")
)


class Bucket:
    """A client of one bucket. ``session_options`` gives the keyword arguments of a boto3 session
    (explicit keys, or a profile); it is called again after a failure, so rotated credentials are read."""

    def __init__(self, name: str, region: str, endpoint_url: str | None, session_options: Callable[[], dict[str, Any]]):
        self.name = name
        self.region = region
        self.endpoint_url = endpoint_url
        self._session_options = session_options
        self._client: Any = None

    @property
    def where(self) -> str:
        return self.endpoint_url or f"AWS region {self.region}"

    def connect(self) -> None:
        """Find the bucket and its region; :class:`ConfigError` when it cannot be used as configured,
        :class:`RetryableError` when S3 cannot be reached now."""
        client = self._new_client(self.region)
        region = self._bucket_region(client)
        if region != self.region:
            client.close()
            self.region = region
            client = self._new_client(region)
        self._client = client

    def put(self, key: str, body: bytes) -> None:
        """Upload one object; :class:`RetryableError` when it did not arrive."""
        if self._client is None:
            self._client = self._new_client(self.region)
        try:
            self._client.put_object(Bucket=self.name, Key=key, Body=body)
        except (BotoCoreError, ClientError) as exc:
            self.close()  # the next attempt starts from a new session: credentials are read again
            raise RetryableError(
                f"upload of {key!r} to bucket {self.name!r} at {self.where} failed: {_explain(exc)}"
            ) from None

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def _new_client(self, region: str) -> Any:
        try:
            session = boto3.session.Session(**self._session_options())
        except ProfileNotFound as exc:
            raise ConfigError(ConfigIssue("profile", f"{exc}; name a profile of the credentials file")) from None
        config = Config(
            region_name=region,
            retries={"total_max_attempts": 1, "mode": "standard"},  # the sink's runtime retries, with backoff
            connect_timeout=10,
            read_timeout=60,
            s3={"addressing_style": "path"} if self.endpoint_url else None,
        )
        return session.client("s3", endpoint_url=self.endpoint_url, config=config)

    def _bucket_region(self, client: Any) -> str:
        try:
            response = client.head_bucket(Bucket=self.name)
        except NoCredentialsError:
            raise ConfigError(
                ConfigIssue("credentialsFile", f"no AWS credentials found: {_CREDENTIALS_HELP}")
            ) from None
        except ClientError as exc:
            return self._refused(exc)
        except BotoCoreError as exc:
            raise RetryableError(f"cannot reach S3 at {self.where}: {exc}") from None
        return _headers(response).get("x-amz-bucket-region") or self.region

    def _refused(self, exc: ClientError) -> str:
        """The bucket's region when S3 only said it is elsewhere; else the error to raise."""
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        region = _headers(exc.response).get("x-amz-bucket-region")
        if status in (301, 400) and region and region != self.region:
            return region
        bucket = f"the bucket {self.name!r} at {self.where}"
        if status == 404:
            raise ConfigError(
                ConfigIssue("bucketName", f"{bucket} does not exist: create it, or correct bucketName (and region)")
            ) from None
        if status in (401, 403):
            raise ConfigError(
                ConfigIssue(
                    "bucketName",
                    f"access to {bucket} is denied ({_explain(exc)}): check the credentials ({_CREDENTIALS_HELP}) "
                    "and the bucket's policy",
                )
            ) from None
        if status >= 500 or status in (408, 429):
            raise RetryableError(f"S3 at {self.where} cannot answer now: {_explain(exc)}") from None
        raise ConfigError(ConfigIssue("bucketName", f"S3 refused {bucket}: {_explain(exc)}")) from None


def _headers(response: dict[str, Any]) -> dict[str, str]:
    return response.get("ResponseMetadata", {}).get("HTTPHeaders", {})


def _explain(exc: BotoCoreError | ClientError) -> str:
    """What went wrong, with what to do when it is a known S3 error."""
    if not isinstance(exc, ClientError):
        return str(exc)
    error = exc.response.get("Error", {})
    code = error.get("Code", "")
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "")
    text = f"{status} {code}: {error.get('Message') or 'no message'}"
    if code in ("NoSuchBucket", "404"):
        return f"{text}; the bucket is gone: create it again"
    if code in _AUTH_CODES:
        return f"{text}; check the credentials and the bucket's policy"
    return text
