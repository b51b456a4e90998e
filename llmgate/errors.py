"""The gateway's error tree: each error knows its HTTP status and wire shapes.

Raised anywhere in the pipeline, rendered once by the surface in the caller's
format (OpenAI or Anthropic). Messages never contain secrets: adapters build
upstream errors from the provider's message, not from request headers.
"""

from __future__ import annotations

from typing import Any

import orjson

# Anthropic's error `type` for each HTTP status we emit.
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    410: "not_found_error",
    413: "request_too_large",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "api_error",
    529: "overloaded_error",
}


class GatewayError(Exception):
    """Base of every error the gateway answers with."""

    status: int = 500
    type: str = "api_error"
    code: str | None = None
    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.retry_after = retry_after
        self.headers = dict(headers or {})
        if retry_after is not None:
            self.headers.setdefault("retry-after", str(max(1, round(retry_after + 0.499))))

    def openai_body(self) -> bytes:
        return orjson.dumps(
            {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        )

    def anthropic_body(self) -> bytes:
        kind = _ANTHROPIC_TYPES.get(self.status, "api_error")
        return orjson.dumps({"type": "error", "error": {"type": kind, "message": self.message}})

    def as_dict(self) -> dict[str, Any]:
        return {"message": self.message, "type": self.type, "param": self.param, "code": self.code}


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"


class Unprocessable(InvalidRequest):
    status = 422


class AuthError(GatewayError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class PermissionDenied(GatewayError):
    status = 403
    type = "permission_error"
    code = "model_not_allowed"


class NotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class Gone(GatewayError):
    status = 410
    type = "invalid_request_error"
    code = "gone"


class PayloadTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class Throttled(GatewayError):
    """The gateway's own limits refuse the call (retry later)."""

    status = 429
    type = "requests"
    code = "rate_limit_exceeded"


class QuotaExceeded(GatewayError):
    """A budget is spent: not worth retrying until the period rolls over."""

    status = 429
    type = "insufficient_quota"
    code = "insufficient_quota"


class UpstreamError(GatewayError):
    """The provider failed or answered with an error the caller did not cause."""

    status = 502
    type = "upstream_error"
    code = "upstream_error"
    retryable = True


class UpstreamCallerError(GatewayError):
    """The provider refused the request itself (a 4xx the caller caused): never retried."""

    status = 400
    type = "invalid_request_error"
    retryable = False


class ContextWindowExceeded(UpstreamCallerError):
    code = "context_length_exceeded"


class UpstreamRateLimited(UpstreamError):
    status = 429
    type = "requests"
    code = "rate_limit_exceeded"


class UpstreamUnavailable(UpstreamError):
    status = 503
    type = "service_unavailable"
    code = "upstream_unavailable"


class UpstreamTimeout(UpstreamError):
    status = 504
    type = "timeout"
    code = "upstream_timeout"


class ProviderDisabled(GatewayError):
    """A configured provider has no credentials; it answers 503 until configured."""

    status = 503
    type = "service_unavailable"
    code = "provider_not_configured"
