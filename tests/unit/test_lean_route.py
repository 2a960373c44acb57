"""LeanRoute: the event endpoints' route, documented as FastAPI documents a route, served
without its dependency solving and response validation, and answering the same."""

from __future__ import annotations

import functools
from typing import Annotated, Any, cast

import pytest
from fastapi import Depends, FastAPI, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from pydantic import BaseModel

from worker.ingress.lean import LeanRoute


class Answer(BaseModel):
    name: str
    note: str | None = None
    size: int = 0


def _app(order: list[str]) -> FastAPI:
    app = FastAPI()

    async def token_check(request: Request) -> None:
        order.append("token")
        if request.headers.get("authorization") != "Bearer t":
            raise _Refused()

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"errors": [[list(e["loc"]), e["msg"]] for e in exc.errors()]}, 422)

    @app.exception_handler(_Refused)
    async def refused(_request: Request, _exc: _Refused) -> JSONResponse:
        return JSONResponse({"error": "refused"}, 401)

    async def lean_endpoint(
        request: Request, name: Annotated[str, Path(min_length=2, pattern=r"^[a-z]+$")]
    ) -> Answer:
        order.append("endpoint")
        return Answer(name=name, size=len(await request.body()))

    async def fastapi_endpoint(
        request: Request, name: Annotated[str, Path(min_length=2, pattern=r"^[a-z]+$")]
    ) -> Answer:
        return Answer(name=name, size=len(await request.body()))

    options: dict[str, Any] = {
        "status_code": 202,
        "response_model": Answer,
        "response_model_exclude_none": True,
    }
    lean = functools.partial(LeanRoute, token_check=token_check)
    app.router.add_api_route(
        "/lean/{name}",
        lean_endpoint,
        methods=["POST"],
        route_class_override=cast(type[APIRoute], lean),
        **options,
    )
    app.router.add_api_route(
        "/fastapi/{name}",
        fastapi_endpoint,
        methods=["POST"],
        dependencies=[Depends(token_check)],
        **options,
    )
    return app


class _Refused(Exception):
    pass


AUTH = {"Authorization": "Bearer t"}


def test_it_answers_as_fastapi_would() -> None:
    client = TestClient(_app([]))
    for path in ("lean", "fastapi"):
        answer = client.post(f"/{path}/abc", content=b"12345", headers=AUTH)
        assert answer.status_code == 202
        assert answer.headers["content-type"] == "application/json"
        assert answer.content == b'{"name":"abc","size":5}'  # note left out: None


def test_the_token_is_checked_first_then_the_path_then_the_endpoint_runs() -> None:
    order: list[str] = []
    client = TestClient(_app(order))
    refused = client.post("/lean/NOT-VALID")
    assert (refused.status_code, refused.json()) == (401, {"error": "refused"})
    assert order == ["token"]
    order.clear()
    invalid = client.post("/lean/NOT-VALID", headers=AUTH)
    assert invalid.status_code == 422
    assert order == ["token"]
    fastapi_invalid = client.post("/fastapi/NOT-VALID", headers=AUTH)
    assert invalid.json() == fastapi_invalid.json()  # the same errors, at ["path", "name"]
    assert invalid.json()["errors"][0][0] == ["path", "name"]
    order.clear()
    assert client.post("/lean/ok", headers=AUTH).status_code == 202
    assert order == ["token", "endpoint"]


def test_the_schema_is_fastapis() -> None:
    schema = _app([]).openapi()
    lean, plain = (
        schema["paths"]["/lean/{name}"]["post"],
        schema["paths"]["/fastapi/{name}"]["post"],
    )
    for key in ("parameters", "responses"):
        assert lean[key] == plain[key]


def test_dependencies_are_refused_not_skipped() -> None:
    async def endpoint(request: Request) -> Answer:
        return Answer(name="x")

    async def check(request: Request) -> None:
        pass

    with pytest.raises(ValueError, match="no dependencies"):
        LeanRoute("/x", endpoint, token_check=check, dependencies=[Depends(check)])
