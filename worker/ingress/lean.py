"""The event endpoints' routes: declared and documented as FastAPI routes, served without
FastAPI's per-request machinery.

An alert storm is thousands of these requests a minute, and for each FastAPI solved the
endpoint's dependencies (the token check), validated the returned model against the response
model and encoded it again, inside two exit stacks: 15% of the api's instructions per webhook
(1,274,184 with it, 1,081,289 without; callgrind, bench/api_profile.py), and 150 of its 700 us
of CPU on the development VM. A ``LeanRoute`` keeps what the schema is made from (path,
response model, status, the body's schema, the token requirement) and does only the work the
endpoint needs: the token check, the path parameters validated as FastAPI would, the endpoint
called, its model written as JSON once.

Errors are raised as before (``ApiError``, ``RequestValidationError`` for a bad path
parameter) and answered by the application's exception handlers, the same shape as anywhere.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, get_origin

from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import request_response

TokenCheck = Callable[[Request], Awaitable[None]]


class LeanRoute(APIRoute):
    """An ``APIRoute`` whose endpoint takes the request (and its path parameters, each declared
    ``Annotated[str, Path(...)]``) and returns a pydantic model.

    ``token_check`` runs first, before the path is even looked at. It is required, and FastAPI
    dependencies are refused: a route that silently skipped a declared dependency would be a
    route without its token check.
    """

    def __init__(
        self,
        path: str,
        endpoint: Callable[..., Awaitable[BaseModel]],
        *,
        token_check: TokenCheck,
        **options: Any,
    ) -> None:
        if options.get("dependencies"):
            raise ValueError(f"{path}: a LeanRoute runs no dependencies; give token_check")
        super().__init__(path, endpoint, **options)
        self.token_check = token_check
        self._path_params = _path_params(endpoint)
        self.app = request_response(self._handle)

    async def _handle(self, request: Request) -> Response:
        await self.token_check(request)
        given = {}
        for name, adapter in self._path_params.items():
            try:
                given[name] = adapter.validate_python(request.path_params[name])
            except ValidationError as exc:
                errors = exc.errors(include_url=False)
                raise RequestValidationError(
                    [{**error, "loc": ("path", name, *error["loc"])} for error in errors]
                ) from None
        answer = await self.endpoint(request, **given)
        return Response(
            answer.model_dump_json(exclude_none=self.response_model_exclude_none),
            status_code=self.status_code or 200,
            media_type="application/json",
        )


def _path_params(endpoint: Callable[..., Any]) -> dict[str, TypeAdapter[Any]]:
    """A validator for each of ``endpoint``'s parameters but ``request``, from its annotation
    (``Annotated[str, Path(...)]``: the constraints FastAPI would have checked)."""
    adapters: dict[str, TypeAdapter[Any]] = {}
    for name, parameter in inspect.signature(endpoint, eval_str=True).parameters.items():
        if name == "request":
            continue
        annotation = parameter.annotation
        if get_origin(annotation) is not Annotated:
            raise TypeError(f"{name}: a LeanRoute path parameter is Annotated[..., Path(...)]")
        adapters[name] = TypeAdapter(annotation)
    return adapters
