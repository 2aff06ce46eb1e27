"""JSON request bodies read strictly: a member name repeated in one object is refused.

Starlette reads a body with ``json.loads``, which keeps the last of repeated members without a
word: ``{"threshold": 90, "threshold": 10}`` set a rule's threshold to 10 and the 90 the client
also sent vanished. RFC 8259 leaves such JSON open to interpretation, so, as for device
payloads, it is refused (422, through FastAPI's own JSON-error path) instead of read one way.
Routes with JSON bodies use ``StrictJsonRoute`` as their router's ``route_class``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

from ingest import DuplicateMemberError, loads_strict


class StrictJsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            try:
                self._json = loads_strict(await self.body())
            except DuplicateMemberError as exc:
                # JSONDecodeError is what FastAPI turns into a 422 json_invalid error.
                raise json.JSONDecodeError(
                    f"member {json.dumps(exc.name)} appears more than once in one object", "", 0
                ) from None
        return self._json


class StrictJsonRoute(APIRoute):
    """An APIRoute whose handler reads JSON bodies with ``StrictJsonRequest``."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            return await handler(StrictJsonRequest(request.scope, request.receive))

        return strict
