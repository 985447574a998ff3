"""The original llmcam's demo scenarios, end to end over HTTP, with the stand-ins:
(0) add a custom function tool and chain it with a capture; (1) add a road-data API from its
OpenAPI spec and use it with the camera and vision tools; (2) capture, ask the vision model,
detect, capture again, plot, and the session actor stays lean through it all."""

from __future__ import annotations

import json
import re

import httpx
import ray
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from actors.session.names import NAMESPACE, session_key
from testing.standins import Call, OpenAIServer, Text, ToolCalls, VideoServer
from testing.standins._background import BackgroundServer
from tests.helpers import new_session, say, serving, tool_results

GATEWAY = "tools"  # conftest: the tool tests' gateway

QUESTION_MARKER = "Describe this image quantitatively"
SAVED = re.compile(r"saved it as (\S+?)\. ")
ROAD_SPEC = {
    "openapi": "3.0.1",
    "info": {"title": "Road traffic (stand-in of tie.digitraffic.fi)", "version": "1.0"},
    "paths": {
        "/api/traffic-message/v1/messages": {"get": {
            "operationId": "trafficMessages",
            "summary": "Current traffic announcements",
            "parameters": [{"name": "situationType", "in": "query", "required": False,
                            "schema": {"type": "string",
                                       "enum": ["TRAFFIC_ANNOUNCEMENT", "ROAD_WORK"]}}],
            "responses": {"200": {"description": "announcements"}}}},
        "/api/tms/v1/stations/{id}/data": {"get": {
            "operationId": "tmsStationData",
            "summary": "Traffic volume and speed at a measuring station",
            "parameters": [{"name": "id", "in": "path", "required": True,
                            "schema": {"type": "integer"}}],
            "responses": {"200": {"description": "data"}}}},
    },
}


class RoadServer(BackgroundServer):
    """A road-data API with its OpenAPI document, on 127.0.0.1."""

    def __init__(self) -> None:
        self.queries: list[str] = []
        super().__init__(Starlette(routes=[
            Route("/swagger/openapi.json", self._spec),
            Route("/api/traffic-message/v1/messages", self._messages),
            Route("/api/tms/v1/stations/{id}/data", self._tms),
        ]))

    async def _spec(self, request: Request) -> Response:
        return JSONResponse(ROAD_SPEC)

    async def _messages(self, request: Request) -> Response:
        self.queries.append(request.url.query)
        return JSONResponse({"announcements": [{
            "title": "Traffic jam on road 1 at Porvoo, Harabacka", "municipality": "Porvoo",
            "situationType": request.query_params.get("situationType", "TRAFFIC_ANNOUNCEMENT"),
        }]})

    async def _tms(self, request: Request) -> Response:
        return JSONResponse({"id": int(request.path_params["id"]), "speedKmh": 12})


road = serving(RoadServer)


def test_scenario_0_custom_function_tool(client: httpx.Client, fresh_llm: OpenAIServer,
                                         video: VideoServer) -> None:
    sid = new_session(client)
    fresh_llm.script("add my camera function", [ToolCalls([Call("add_function_tools", {
        "service_name": "my_cameras", "function_names": ["tests.sample_tools.camera_link"]})])])
    body = say(client, sid, "add my camera function")
    assert tool_results(body) == ["Added 1 tools for my_cameras: camera_link"]
    tools = {t["function"]["name"]: t for t in client.get(f"/api/sessions/{sid}/tools").json()}
    assert set(tools["camera_link"]["function"]["parameters"]["required"]) == {"host", "location"}

    fresh_llm.script("capture the harbour", [
        ToolCalls([Call("camera_link", {"host": video.root_url, "location": "harbour"})]),
        ToolCalls([Call("capture_youtube_live_frame", {"link": video.mp4_url,
                                                        "place": "harbour"})]),
    ])
    body = say(client, sid, "capture the harbour")
    link, captured = tool_results(body)
    assert link == video.mp4_url
    name = SAVED.search(captured)[1]  # type: ignore[index]
    # the model is told how to show the picture: markdown with the file's URL
    assert f"![{name}](files/{name})" in captured
    assert body["reply"].startswith("done: Captured a 1280x720 frame")
    picture = client.get(f"/api/sessions/{sid}/files/{name}")
    assert picture.status_code == 200 and picture.headers["content-type"] == "image/jpeg"


def test_scenario_1_road_api_and_vision(client: httpx.Client, fresh_llm: OpenAIServer,
                                        road: RoadServer) -> None:
    sid = new_session(client)
    fresh_llm.script("add road_digitraffic", [ToolCalls([Call("add_api_tools", {
        "service_name": "road_digitraffic", "base_url": road.root_url,
        "oas_url": f"{road.root_url}/swagger/openapi.json"})])])
    [added] = tool_results(say(client, sid, "add road_digitraffic"))
    assert added == "Added 2 tools for road_digitraffic: trafficMessages, tmsStationData"

    fresh_llm.script("where is a traffic jam", [
        ToolCalls([Call("trafficMessages", {"situationType": "TRAFFIC_ANNOUNCEMENT"})]),
        ToolCalls([Call("cap", {"key": "Porvoo"})]),
    ])
    messages, captured = tool_results(say(client, sid, "where is a traffic jam? show it"))
    assert "Traffic jam on road 1 at Porvoo" in messages
    assert road.queries == ["situationType=TRAFFIC_ANNOUNCEMENT"]
    name = SAVED.search(captured)[1]  # type: ignore[index]

    fresh_llm.script("what is on the road", [ToolCalls([Call("detect_objects",
                                                             {"image_path": name})])])
    [found] = tool_results(say(client, sid, "what is on the road there?"))
    detection = json.loads(found)
    kinds = {f["name"]: f["kind"] for f in client.get(f"/api/sessions/{sid}/files").json()}
    assert kinds == {name: "capture", detection["file"]: "detection"}


def test_scenario_2_capture_ask_detect_plot(client: httpx.Client, fresh_llm: OpenAIServer,
                                            video: VideoServer) -> None:
    sid = new_session(client)
    fresh_llm.script("here is the live feed", [ToolCalls([Call(
        "capture_youtube_live_frame", {"link": video.hls_url, "place": "Santa"})])])
    [first] = tool_results(say(client, sid, "here is the live feed, capture it"))
    first_name = SAVED.search(first)[1]  # type: ignore[index]

    fresh_llm.script(QUESTION_MARKER, [Text('{"person": 2, "building": 1}'),
                                       Text('{"person": 2}'), Text("{'people': 4}")])
    fresh_llm.script("how many people", [ToolCalls([Call(
        "ask_gpt4v_about_image_file", {"path": first_name})])])
    [answer] = tool_results(say(client, sid, "how many people does the vision model see?"))
    assert json.loads(answer)["person"] == 2

    fresh_llm.script("use yolo", [ToolCalls([Call("detect_objects", {"image_path": first_name})])])
    [found] = tool_results(say(client, sid, "use yolo on it"))
    assert json.loads(found)["file"].startswith("detection_")

    fresh_llm.script("capture another", [ToolCalls([Call(
        "capture_youtube_live_frame", {"link": video.hls_url, "place": "Santa"})])])
    [second] = tool_results(say(client, sid, "capture another image"))
    second_name = SAVED.search(second)[1]  # type: ignore[index]

    fresh_llm.script("plot the people", [ToolCalls([Call("plot_object", {
        "images": [first_name, second_name], "object": "person", "methods": ["gpt", "yolo"]})])])
    body = say(client, sid, "plot the people in both images with both methods")
    plot = json.loads(tool_results(body)[0])
    assert plot["counts"]["yolo"] == [0, 0] and sorted(plot["counts"]["gpt"]) == [2, 4]
    assert client.get(f"/api/sessions/{sid}/{plot['url']}").content.startswith(b"\x89PNG")
    kinds = sorted(f["kind"] for f in client.get(f"/api/sessions/{sid}/files").json())
    assert kinds == ["capture", "capture", "detection", "plot"]

    # After all that, the session actor's own process has loaded none of the heavy libraries.
    fresh_llm.script("what did you load", [
        ToolCalls([Call("add_function_tools", {"service_name": "probe", "function_names": [
            "tests.sample_tools.heavy_modules"]})]),
        ToolCalls([Call("heavy_modules", {})]),
    ])
    report = json.loads(tool_results(say(client, sid, "what did you load?"))[1])
    actor = ray.get_actor(f"session:{session_key(sid)}", namespace=NAMESPACE)
    pid = ray.get(actor.start.remote())["pid"]
    assert report["pid"] == pid
    assert report["modules"] == [] and report["libraries"] == [], report
    with open(f"/proc/{pid}/maps") as maps:
        mapped = maps.read()
    for library in ("libtorch", "/cv2/", "matplotlib/", "/ultralytics/"):
        assert library not in mapped
