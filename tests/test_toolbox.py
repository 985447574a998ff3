"""The per-session toolbox: API tools from an OpenAPI spec, allowed functions, removal, and
the URL guard in front of every fetch."""

from __future__ import annotations

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse
from starlette.routing import Route

from testing.standins import Call, ToolCalls
from testing.standins._background import BackgroundServer
from tests.helpers import Gateway, new_session, say, serving, tool_results

SPEC = {
    "openapi": "3.0.3",
    "info": {"title": "Road data", "version": "1"},
    "paths": {
        "/stations/{station_id}/data": {"get": {
            "operationId": "getStationData", "summary": "Latest sensor data of a station",
            "parameters": [
                {"name": "station_id", "in": "path", "required": True,
                 "schema": {"type": "integer"}},
                {"name": "sensor", "in": "query", "schema": {"$ref": "#/components/schemas/S"}},
            ]}},
        "/reports": {"post": {
            "operationId": "createReport", "summary": "File a road report",
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/Report"}}}}}},
    },
    "components": {"schemas": {
        "S": {"type": "string", "enum": ["temp", "wind"], "example": "temp"},
        "Report": {"type": "object", "required": ["text"],
                   "properties": {"text": {"type": "string"}, "severity": {"type": "integer"}}},
    }},
}


class RoadApi(BackgroundServer):
    def __init__(self) -> None:
        self.calls: list[dict] = []

        async def spec(_: Request) -> JSONResponse:
            return JSONResponse(SPEC)

        async def data(request: Request) -> JSONResponse:
            self.calls.append({"station": request.path_params["sid"],
                               "sensor": request.query_params.get("sensor")})
            return JSONResponse({"station": int(request.path_params["sid"]), "temp": -3.5})

        async def report(request: Request) -> JSONResponse:
            self.calls.append({"report": await request.json()})
            return JSONResponse({"ok": True}, status_code=201)

        async def to_metadata(_: Request) -> RedirectResponse:
            return RedirectResponse("http://169.254.169.254/latest/meta-data/")

        super().__init__(Starlette(routes=[
            Route("/openapi.json", spec), Route("/stations/{sid}/data", data),
            Route("/reports", report, methods=["POST"]), Route("/redirect", to_metadata)]))


road = serving(RoadApi)


def tool_names(c: httpx.Client, sid: str) -> set[str]:
    return {t["function"]["name"] for t in c.get(f"/api/sessions/{sid}/tools").json()}


def test_add_api_tools_and_call_them(tools_gateway: Gateway, fresh_llm, road: RoadApi) -> None:
    with tools_gateway.client() as c:
        sid, other = new_session(c), new_session(c)
        fresh_llm.script("add road api", [ToolCalls([Call("add_api_tools", {
            "service_name": "road", "base_url": road.root_url})])])
        body = say(c, sid, "add road api")
        assert "Added 2 tools for road" in tool_results(body)[0]
        tools = {t["function"]["name"]: t["function"]
                 for t in c.get(f"/api/sessions/{sid}/tools").json()}
        params = tools["getStationData"]["parameters"]
        assert params["required"] == ["station_id"]
        assert params["properties"]["sensor"]["enum"] == ["temp", "wind"]  # $ref resolved
        assert "example" not in params["properties"]["sensor"]
        assert tools["createReport"]["parameters"]["required"] == ["body"]
        assert "getStationData" not in tool_names(c, other)  # only this session's toolbox

        fresh_llm.script("road data", [ToolCalls([
            Call("getStationData", {"station_id": 42, "sensor": "temp"}),
            Call("createReport", {"body": {"text": "ice", "severity": 2}})])])
        results = tool_results(say(c, sid, "road data"))
        assert '"temp":-3.5' in results[0].replace(" ", "")
        assert road.calls[-2:] == [{"station": "42", "sensor": "temp"},
                                   {"report": {"text": "ice", "severity": 2}}]

        fresh_llm.script("remove road", [ToolCalls([Call("remove_tools",
                                                         {"service_name": "road"})])])
        assert "Removed 2 tools" in tool_results(say(c, sid, "remove road"))[0]
        assert "getStationData" not in tool_names(c, sid)


def test_add_function_tools_only_from_allowed_modules(client: httpx.Client, fresh_llm) -> None:
    sid = new_session(client)
    refused = ["os.system", "builtins.eval", "eval", "subprocess.run",
               "tests.sample_tools._hidden", "tests.sample_tools.__class__",
               "actors.tools.files.TOOLS", "tests.sample_tools.os.system"]
    fresh_llm.script("sneaky", [ToolCalls([
        Call("add_function_tools", {"service_name": f"s{i}", "function_names": [name]})
        for i, name in enumerate(refused)])])
    results = tool_results(say(client, sid, "sneaky"))
    assert len(results) == len(refused)
    assert all(r.startswith("Refused") and "Nothing was added" in r for r in results), results
    before = tool_names(client, sid)
    assert not {"system", "eval", "run", "_hidden"} & before

    fresh_llm.script("good one", [
        ToolCalls([Call("add_function_tools", {
            "service_name": "maths", "function_names": ["tests.sample_tools.add_numbers",
                                                        "tests.sample_tools.shout"]})]),
        ToolCalls([Call("add_numbers", {"a": 2, "b": 40}), Call("shout", {"text": "hi"})])])
    body = say(client, sid, "good one")
    assert tool_results(body)[1:] == ["42", "HI"]


def test_guard_refuses_loopback_and_private(client: httpx.Client, fresh_llm) -> None:
    """The default gateway allows no private hosts: the stand-ins on 127.0.0.1 are refused."""
    sid = new_session(client)
    targets = ["http://127.0.0.1:9/openapi.json", "http://localhost:9/x",
               "http://10.0.0.1/openapi.json", "http://169.254.169.254/latest",
               "http://[::1]:9/", "file:///etc/passwd"]
    fresh_llm.script("private urls", [ToolCalls([
        Call("add_api_tools", {"service_name": f"p{i}", "base_url": "http://x.invalid",
                               "oas_url": url}) for i, url in enumerate(targets)])])
    results = tool_results(say(client, sid, "private urls"))
    for url, result in zip(targets, results, strict=True):
        assert result.startswith("Error: add_api_tools failed"), (url, result)
        assert "refused" in result or "Unsupported" in result or "scheme" in result, result


def test_guard_checks_every_redirect(tools_gateway: Gateway, fresh_llm, road: RoadApi) -> None:
    """Allowed: 127.0.0.1. A redirect from there to the metadata address is still refused."""
    with tools_gateway.client() as c:
        sid = new_session(c)
        fresh_llm.script("redirected", [ToolCalls([Call("add_api_tools", {
            "service_name": "r", "base_url": road.root_url,
            "oas_url": f"{road.root_url}/redirect"})])])
        result = tool_results(say(c, sid, "redirected"))[0]
        assert "refused" in result and "169.254.169.254" not in result  # names no address
