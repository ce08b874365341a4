"""The errors a request can get, in OpenAI's shape: ``{"error": {"message", "type", "param",
"code"}}`` with a one-line message and the matching HTTP status."""

from __future__ import annotations

from fastapi.responses import JSONResponse

from potstill.serve.schema import ErrorDetail, ErrorResponse

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
}


class ApiError(Exception):
    """A request the server answers with an error status and a one-line message."""

    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = " ".join(message.split())  # one line, whatever the cause said
        self.param = param
        self.code = code

    def body(self) -> ErrorResponse:
        kind = ERROR_TYPES.get(self.status, "invalid_request_error")
        return ErrorResponse(
            error=ErrorDetail(message=self.message, type=kind, param=self.param, code=self.code)
        )

    def response(self) -> JSONResponse:
        return JSONResponse(self.body().model_dump(), status_code=self.status)
