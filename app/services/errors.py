"""Domain errors that routes turn into HTTP responses with the same message."""

from __future__ import annotations


class ServiceError(Exception):
    """Base error; ``status_code`` is the HTTP status the API answers with."""

    status_code = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(ServiceError):
    status_code = 404


class Forbidden(ServiceError):
    status_code = 403


class Conflict(ServiceError):
    status_code = 409


class Invalid(ServiceError):
    status_code = 422


class TooLarge(ServiceError):
    status_code = 413


class Unsupported(Invalid):
    """Input of a kind the endpoint does not take (e.g. an image uploaded as prompts)."""

    status_code = 415


class Unauthorized(ServiceError):
    status_code = 401


class Throttled(ServiceError):
    status_code = 429
