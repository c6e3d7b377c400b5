"""The one error vocabulary shared by REST and WebSocket: code -> HTTP status."""

from __future__ import annotations

from typing import Any, ClassVar


class ApiError(Exception):
    code: ClassVar[str] = "internal"
    status: ClassVar[int] = 500
    default_message: ClassVar[str] = "internal error"

    def __init__(self, message: str | None = None, details: Any = None) -> None:
        super().__init__(message or self.default_message)
        self.message = message or self.default_message
        self.details = details

    def body(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "details": self.details}


class BadRequest(ApiError):
    code, status, default_message = "bad_request", 400, "bad request"


class ValidationFailed(BadRequest):
    """Failed validation of a body or query: 422 with details = {field: [messages]}."""

    status = 422
    default_message = "validation failed"


class InvalidJson(ApiError):
    code, status, default_message = "invalid_json", 400, "body is not valid JSON"


class Unauthorized(ApiError):
    code, status, default_message = "unauthorized", 401, "authentication required"


class Forbidden(ApiError):
    code, status, default_message = "forbidden", 403, "not allowed"


class NotFound(ApiError):
    code, status, default_message = "not_found", 404, "not found"


class Conflict(ApiError):
    code, status, default_message = "conflict", 409, "conflict"


class TooLarge(ApiError):
    code, status, default_message = "too_large", 413, "too large"


class RateLimited(ApiError):
    code, status, default_message = "rate_limited", 429, "rate limit exceeded"

    def __init__(self, message: str | None = None, retry_after: float = 1.0) -> None:
        super().__init__(message, {"retry_after": retry_after})
        self.retry_after = retry_after


class Unavailable(ApiError):
    code, status, default_message = "unavailable", 503, "service unavailable"


class UnknownType(BadRequest):
    code, default_message = "unknown_type", "unknown frame type"
