"""OpenAI-shaped HTTP errors: `{"error": {"message", "type", "param", "code"}}` plus the HTTP status.

The app turns a ServeError into a JSON response with `status`, `body()` and `headers()`. Messages are
written for the client: they name the request field at fault and never contain server file-system paths.
"""

from __future__ import annotations

from ..errors import ToolkitError

# The `type` strings llama-server and OpenAI use, by status (401's is what the openai client expects).
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    500: "server_error",
    503: "unavailable_error",
}


def error_body(
    message: str, *, status: int = 400, type: str | None = None, param: str | None = None, code=None
) -> dict:
    """The OpenAI error body; `code` defaults to the HTTP status, as llama-server sends it."""
    return {
        "error": {
            "message": message,
            "type": type or _TYPES.get(status, "invalid_request_error"),
            "param": param,
            "code": status if code is None else code,
        }
    }


class ServeError(ToolkitError):
    """A request the server answers with an error: `status` is the HTTP status (400, 401, 404, 413, 422, 503)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        type: str | None = None,
        code: str | int | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param
        self.type, self.code, self.retry_after = type, code, retry_after

    def body(self) -> dict:
        return error_body(self.message, status=self.status, type=self.type, param=self.param, code=self.code)

    def headers(self) -> dict[str, str]:
        # Retry-After tells well-behaved clients (the openai client among them) when to retry a 503.
        return {"Retry-After": str(self.retry_after)} if self.retry_after is not None else {}


def bad_request(message: str, param: str | None = None) -> ServeError:
    return ServeError(400, message, param=param)


def unavailable(message: str, retry_after: int = 1) -> ServeError:
    """503: the model is loading or the queue is full."""
    return ServeError(503, message, retry_after=retry_after)
