"""``s3`` sink: Antrea Flow Aggregator's S3 uploader (``s3Uploader`` in ``flow-aggregator.conf``).

Records are written as Antrea's S3 CSV (:mod:`s3csv`), gzipped when ``compress``, one object per
file, named ``[<bucketPrefix>/]records-<12 random [a-z0-9]>.csv[.gz]`` as Antrea names them.

A file is one batch of the sink's runtime: its defaults are ``batchSize`` = ``maxRecordsPerFile``
and ``flushInterval`` = ``uploadInterval``, so a file is uploaded as soon as it holds
``maxRecordsPerFile`` records, or once its oldest record has waited ``uploadInterval``, and at the
stop. Until S3 has taken a file, its records stay in the sink's buffer: a failed upload raises
:class:`RetryableError`, and the runtime tries again with backoff, with what arrived meanwhile (up to
``maxRecordsPerFile``), under the same object key, so an upload that did arrive although it
failed is replaced, not repeated. What is still not uploaded at the stop is spooled or counted as
lost, by the runtime's rules.
"""

from __future__ import annotations

import ipaddress
import os
import random
import re
import time
from configparser import Error as IniError
from configparser import RawConfigParser
from typing import Any, Literal

from prometheus_client import CollectorRegistry, Counter
from pydantic import Field, field_validator

from flowscope.core.components import Batch, Record, Sink
from flowscope.core.config import OptionsModel, duration_at_least, format_duration
from flowscope.core.errors import ConfigError, ConfigIssue, FlowscopeError, RetryableError
from flowscope.core.hookspecs import hookimpl
from flowscope.core.metrics import shared
from flowscope.core.preflight import readable_file
from flowscope.plugins.sinks import s3csv

DEFAULT_REGION = "us-west-2"
_KEY_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_BUCKET_RULES = (
    "3 to 63 characters: lowercase letters, digits, '.' and '-', beginning and ending with a letter or digit, "
    "without '..' and not an IP address"
)


class S3Options(OptionsModel):
    bucketName: str = Field(description="the bucket the files are uploaded to (it must exist)")
    bucketPrefix: str = Field("", description="the 'folder' of the files in the bucket; default its root")
    region: str | None = Field(
        None, description=f"region hint for the bucket; default $AWS_REGION, else {DEFAULT_REGION}"
    )
    recordFormat: Literal["CSV"] = Field("CSV", description="format of the files; only CSV")
    compress: bool = Field(True, description="gzip each file (.csv.gz)")
    maxRecordsPerFile: int = Field(1_000_000, gt=0, lt=1 << 31, description="records per file at most")
    uploadInterval: duration_at_least(1.0) = Field(  # type: ignore[valid-type]
        "60s", description="upload a file once its oldest record has waited this long"
    )
    endpointURL: str | None = Field(None, description="an S3-compatible store's URL, http(s)://host[:port]")
    credentialsFile: str | None = Field(None, description="an AWS shared credentials file; default the environment")
    profile: str | None = Field(None, description="profile of the credentials; default $AWS_PROFILE, else default")
    clusterUUID: str = Field("", description="the clusterUUID column of every line; default each record's clusterId")

    @field_validator("bucketName")
    @classmethod
    def _bucket_name(cls, value: str) -> str:
        if not _BUCKET_NAME.fullmatch(value) or ".." in value or _is_ip(value):
            raise ValueError(f"not a valid S3 bucket name: {_BUCKET_RULES}")
        return value

    @field_validator("endpointURL")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"https?://[^/\s]", value):
            raise ValueError("must start with http:// or https:// and name a host, e.g. http://127.0.0.1:9000")
        return value


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _uploads(registry: CollectorRegistry) -> Counter:
    return Counter("flowscope_s3_uploads", "Objects the s3 sink uploaded.", ["instance"], registry=registry)


def read_credentials(path: str, profile: str) -> dict[str, str]:
    """The keys of ``profile`` in an AWS shared credentials file, as boto3 session arguments;
    :class:`ConfigError` naming the key to fix when the file does not give them."""
    parser = RawConfigParser()
    try:
        with open(path, encoding="utf-8") as file:
            parser.read_file(file)
    except OSError as exc:
        raise ConfigError(ConfigIssue("credentialsFile", f"cannot read {path!r}: {exc.strerror or exc}")) from None
    except (IniError, UnicodeDecodeError) as exc:
        detail = str(exc).splitlines()[0]
        raise ConfigError(
            ConfigIssue("credentialsFile", f"{path!r} is not an AWS credentials file ([profile] sections): {detail}")
        ) from None
    if not parser.has_section(profile):
        found = ", ".join(parser.sections()) or "none"
        raise ConfigError(ConfigIssue("profile", f"{path!r} has no [{profile}] section (it has: {found})"))
    section = parser[profile]
    missing = [key for key in ("aws_access_key_id", "aws_secret_access_key") if not section.get(key)]
    if missing:
        raise ConfigError(ConfigIssue("credentialsFile", f"[{profile}] of {path!r} lacks {' and '.join(missing)}"))
    options = {
        "aws_access_key_id": section["aws_access_key_id"],
        "aws_secret_access_key": section["aws_secret_access_key"],
    }
    if section.get("aws_session_token"):
        options["aws_session_token"] = section["aws_session_token"]
    return options


def object_key(prefix: str, compress: bool) -> str:
    """A new object's key, as Antrea names them: ``[<prefix>/]records-<12 random [a-z0-9]>.csv[.gz]``."""
    name = "records-" + "".join(random.choices(_KEY_ALPHABET, k=12)) + (".csv.gz" if compress else ".csv")
    return f"{prefix}/{name}" if prefix else name


class S3Sink(Sink):
    """Uploads records to an S3 bucket as Antrea's CSV files."""

    Options = S3Options

    @classmethod
    def runtime_defaults(cls, options: dict[str, Any]) -> dict[str, Any]:
        """One batch is one file: ``maxRecordsPerFile`` records, or what came within ``uploadInterval``.
        The buffer holds a file that is retried and the next one."""
        per_file = options["maxRecordsPerFile"]
        return {
            "batchSize": per_file,
            "flushInterval": format_duration(options["uploadInterval"]),
            "bufferSize": max(100_000, 2 * per_file),
        }

    @classmethod
    def preflight(cls, options: dict[str, Any]) -> list[ConfigIssue]:
        """The credentials file, when given, is readable and has the profile's keys."""
        path = options["credentialsFile"]
        if path is None:
            return []
        issues = readable_file("credentialsFile", path, "AWS credentials file")
        if issues:
            return issues
        try:
            read_credentials(path, _profile(options))
        except ConfigError as exc:
            return exc.issues
        return []

    def __init__(self, options: dict[str, Any], context):
        super().__init__(options, context)
        self.prefix: str = options["bucketPrefix"].strip("/")
        self.compress: bool = options["compress"]
        self.cluster_uuid: str = options["clusterUUID"]
        self._bucket: Any = None
        self._pending: tuple[Record, str] | None = None  # the first record of a failed upload, and its key
        self._uploads = shared(context.metrics, _uploads).labels(instance=context.name)

    def open(self) -> None:
        """Find the bucket. At the start, a problem to fix (no such bucket, no credentials) stops the
        pipeline; when the runtime tries again because S3 was unreachable, it only delays the upload."""
        retrying = self._bucket is not None
        if not retrying:
            self._bucket = self._new_bucket()
        try:
            self._bucket.connect()
        except ConfigError as exc:
            if not retrying:
                raise
            raise RetryableError("; ".join(str(issue) for issue in exc.issues)) from None
        self.context.logger.info("uploading to s3://%s/%s at %s", self._bucket.name, self.prefix, self._bucket.where)

    def _new_bucket(self) -> Any:
        try:
            from flowscope.plugins.sinks.s3client import Bucket
        except ImportError as exc:
            raise FlowscopeError(f"the s3 sink needs boto3: pip install 'flowscope[s3]' ({exc})") from None
        options = self.options
        region = options["region"] or os.environ.get("AWS_REGION") or DEFAULT_REGION
        return Bucket(options["bucketName"], region, options["endpointURL"], self._session_options)

    def _session_options(self) -> dict[str, Any]:
        path = self.options["credentialsFile"]
        if path is not None:
            return read_credentials(path, _profile(self.options))
        return {"profile_name": self.options["profile"]}

    def write(self, records: Batch) -> int:
        key = self._key(records)
        invalid: list[ValueError] = []
        body = s3csv.encode(
            records, self.cluster_uuid, int(time.time()), self.compress, lambda record, exc: invalid.append(exc)
        )
        written = len(records) - len(invalid)
        if written:
            self._bucket.put(key, body)  # RetryableError: the runtime keeps the records and tries again
            self._uploads.inc()
            self.context.logger.debug("uploaded %s: %d records, %d bytes", key, written, len(body))
        self._pending = None
        if invalid:  # counted once the rest is uploaded, so a retry does not count them again
            self.context.counters.dropped(len(invalid), "invalid")
            self.context.logger.warning("dropped %d records that cannot be written, e.g.: %s", len(invalid), invalid[0])
        return written

    def _key(self, records: Batch) -> str:
        """The key of a failed upload when this batch is its retry (it begins with the same record),
        so that an upload S3 did take although it failed is replaced; else a new key."""
        pending = self._pending
        if pending is not None and pending[0] is records[0]:
            return pending[1]
        key = object_key(self.prefix, self.compress)
        self._pending = (records[0], key)
        return key

    def close(self) -> None:
        if self._bucket is not None:
            self._bucket.close()


def _profile(options: dict[str, Any]) -> str:
    return options["profile"] or os.environ.get("AWS_PROFILE") or "default"


@hookimpl
def register_sinks(register):
    register("s3", S3Sink)
