"""Every error VQA Curator raises on purpose. Messages name the value, the cause and the fix.

    VQAError
    ├── ConfigError              a setting is missing or wrong (e.g. no API key)
    ├── InputError               a question file, image or upload is refused
    │   └── IngestError          one or more bad rows; `.problems` lists every one
    ├── EndpointError            the model endpoint failed; `.retryable` says if trying again may help
    │   ├── AuthenticationError  401 / 403: stops the run
    │   ├── BadRequestError      400 / 422
    │   ├── NotFoundError        404: wrong URL or model
    │   ├── PayloadTooLargeError 413: the image is too big for the endpoint
    │   ├── RateLimitedError     429
    │   ├── ServerError          5xx
    │   ├── EndpointTimeoutError connect, first byte or total timeout
    │   ├── EndpointConnectionError  refused, reset, DNS
    │   ├── MalformedResponseError   HTML page, non-JSON, cut-short JSON
    │   ├── EmptyContentError    the model answered nothing
    │   └── TruncatedError       finish_reason=length
    ├── FormatError              model text parsed to no usable answer / options
    ├── ConflictError            the item changed since it was shown (optimistic locking)
    ├── ValidationError          a curator's edit is invalid (empty or duplicate option ...)
    └── ExportError              an export cannot be written

`error_type` is the short, stable name stored on a failed Generation and counted per run.
"""

from __future__ import annotations

from dataclasses import dataclass


class VQAError(Exception):
    error_type = "error"


class ConfigError(VQAError):
    error_type = "config"


class InputError(VQAError):
    error_type = "input"


@dataclass(frozen=True)
class Problem:
    """One rejected input: where it is and why."""

    file: str
    row: int | None  # 1-based row or line number; None for file-level problems
    field: str | None
    reason: str

    def __str__(self) -> str:
        where = self.file
        if self.row is not None:
            where += f", row {self.row}"
        if self.field:
            where += f", field '{self.field}'"
        return f"{where}: {self.reason}"


class IngestError(InputError):
    """All rejected rows of one ingest; nothing was stored."""

    error_type = "ingest"
    shown = 20

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = list(problems)
        lines = [str(p) for p in self.problems[: self.shown]]
        more = len(self.problems) - self.shown
        if more > 0:
            lines.append(f"... and {more} more")
        count = len(self.problems)
        head = f"{count} problem{'s' if count != 1 else ''} found; nothing was imported:"
        super().__init__("\n".join([head, *lines]))


class EndpointError(VQAError):
    error_type = "endpoint"
    retryable = False

    def __init__(self, message: str, *, status: int | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class AuthenticationError(EndpointError):
    error_type = "auth"


class BadRequestError(EndpointError):
    error_type = "bad_request"


class NotFoundError(EndpointError):
    error_type = "not_found"


class PayloadTooLargeError(EndpointError):
    error_type = "payload_too_large"


class RateLimitedError(EndpointError):
    error_type = "rate_limited"
    retryable = True


class ServerError(EndpointError):
    error_type = "server"
    retryable = True


class EndpointTimeoutError(EndpointError):
    error_type = "timeout"
    retryable = True


class EndpointConnectionError(EndpointError):
    error_type = "connection"
    retryable = True


class MalformedResponseError(EndpointError):
    error_type = "malformed"
    retryable = True


class EmptyContentError(EndpointError):
    error_type = "empty"
    retryable = True


class TruncatedError(EndpointError):
    error_type = "length"


class FormatError(VQAError):
    error_type = "format"

    def __init__(self, message: str, *, raw: str | None = None) -> None:
        super().__init__(message)
        self.raw = raw


class ConflictError(VQAError):
    error_type = "conflict"


class ValidationError(VQAError):
    error_type = "validation"


class ExportError(VQAError):
    error_type = "export"
