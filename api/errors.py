"""Error answers that cannot fail, whatever the client sent.

FastAPI's own validation handler echoes each error's ``input`` (and ``ctx``) back to the client.
An input holding a lone surrogate (JSON ``"\\ud800"``) or a ``NaN``/``Infinity`` literal cannot
be written as UTF-8 JSON, so that echo raised inside the handler and a malformed body got a 500
where a 422 belongs. These handlers answer with the minimum the client needs to correct the
request: where (``loc``), why (``msg``) and the error ``type``; never the input itself (it may
also be PHI, which an error body or a log line has no business repeating). Every string that
does go out is made encodable first, since even ``loc`` can hold a member name the client chose.

The FHIR routes answer every error as a FHIR OperationOutcome (HTTP 400 for a parameter this
server cannot honour, as their OpenAPI document says), naming the parameter as the client spelt
it (``_count``, ``_cursor``), not as the Python argument is called.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.fhir.resources import fhir_response, issue, operation_outcome

log = logging.getLogger(__name__)

# The longest message or location part answered; pydantic's own are far shorter, and a
# client's member name is cut rather than echoed at any length.
_MAX_TEXT = 200
# FHIR issue-type codes (http://hl7.org/fhir/valueset-issue-type.html) for HTTP statuses.
_FHIR_ISSUE_BY_STATUS = {401: "login", 403: "forbidden", 404: "not-found", 413: "too-costly"}


def safe_text(value: object, limit: int = _MAX_TEXT) -> str:
    """``value`` as text that any JSON encoder writes: lone surrogates become \\udXXX escapes."""
    text = value if isinstance(value, str) else repr(value)
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _loc_part(part: object) -> str | int:
    return part if type(part) is int else safe_text(part, 60)


def _message(error: Mapping[str, Any]) -> str:
    msg = str(error.get("msg", "invalid value"))
    reason = (error.get("ctx") or {}).get("error")
    if error.get("type") == "json_invalid" and isinstance(reason, str):
        # The parser's own reason (e.g. a repeated member): says why, echoes no input.
        msg = f"{msg}: {reason}"
    return safe_text(msg)


def plain_errors(errors: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Validation errors reduced to loc, msg and type, each safe to encode."""
    return [
        {
            "loc": [_loc_part(p) for p in error.get("loc", ())],
            "msg": _message(error),
            "type": safe_text(error.get("type", "value_error"), 60),
        }
        for error in errors
    ]


def install_error_handlers(app: FastAPI, *, is_fhir: Callable[[Request], bool]) -> None:
    """Register the validation and HTTP error handlers; ``is_fhir`` picks the FHIR routes."""

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = plain_errors(exc.errors())
        if is_fhir(request):
            return _fhir_parameter_error(errors)
        return JSONResponse({"detail": errors}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        headers = dict(exc.headers) if exc.headers else None
        if exc.status_code < 200 or exc.status_code in (204, 304):  # no body allowed
            return Response(status_code=exc.status_code, headers=headers)
        # Starlette types detail as str; FastAPI's HTTPException (a subclass) takes anything,
        # and invalid_input() passes a list of validation errors.
        detail: object = exc.detail
        if is_fhir(request):
            if isinstance(detail, list):
                return _fhir_parameter_error(plain_errors(detail))
            code = _FHIR_ISSUE_BY_STATUS.get(exc.status_code, "invalid")
            return fhir_response(
                operation_outcome(issue("error", code, safe_text(detail))),
                exc.status_code,
                headers,
            )
        if isinstance(detail, list):
            detail = plain_errors(detail)
        elif isinstance(detail, str):
            detail = safe_text(detail, 2000)
        return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=headers)


def _fhir_parameter_error(errors: Sequence[Mapping[str, Any]]) -> JSONResponse:
    """A 400 OperationOutcome with one issue per refused parameter, named as sent."""
    issues = []
    for error in errors:
        loc = [str(p) for p in error["loc"]]
        # ("query", "_count") names a search parameter; a body error has no better name.
        name = loc[-1] if len(loc) >= 2 and loc[0] in ("query", "path", "header") else None
        missing = error["type"] == "missing"
        where = f"search parameter {name!r}" if name else ".".join(loc) or "the request"
        text = f"{where} is required" if missing else f"{where}: {error['msg']}"
        issues.append(issue("error", "required" if missing else "invalid", text, expression=name))
    log.info("FHIR request refused", extra={"issues": len(issues)})
    return fhir_response(operation_outcome(*issues), status.HTTP_400_BAD_REQUEST)
