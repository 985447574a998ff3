"""Secrets in error messages and tool descriptions, without a server: a malformed database URL, a
known error code, OpenAPI descriptions (tests/test_secrets.py follows secrets through a running
gateway)."""

from __future__ import annotations

import logging
import time
import traceback

import httpx
import pytest

from actors.llm import failure
from actors.openapi_tools import MAX_DESCRIPTION, api_tools, describe, load_operations
from actors.store import StoreError, open_store
from tests.helpers import CONTROL, malformed_db_urls, secret_marker


@pytest.mark.parametrize("which", range(5))
def test_a_malformed_db_url_is_a_store_error_without_its_password(
        which: int, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    marker = secret_marker()
    url = malformed_db_urls(marker)[which]
    started = time.monotonic()
    with pytest.raises(StoreError) as raised:
        open_store(url)
    assert time.monotonic() - started < 5  # refused as it is, not after the pool's timeout
    text = "".join(traceback.format_exception(raised.value))
    assert "LLMCAM_DB is not a valid PostgreSQL URL" in str(raised.value)
    assert "***" in str(raised.value)  # the URL is shown, its password not
    assert marker not in text and marker not in repr(raised.value)
    error = raised.value  # no cause or context a traceback would print (libpq's text)
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)
    assert marker not in caplog.text


def test_a_known_error_code_is_named_in_our_words() -> None:
    import openai

    response = httpx.Response(400, request=httpx.Request("POST", "http://x/v1"))
    exc = openai.BadRequestError("This model's maximum context length is 8192 tokens (sk-x)",
                                 response=response,
                                 body={"code": "context_length_exceeded", "message": "sk-x"})
    assert failure(exc) == ("the LLM server refused the request (400): the conversation is "
                            "too long for the model")
    exc = openai.BadRequestError("sk-x", response=response, body={"code": "sk-x"})
    assert failure(exc) == "the LLM server refused the request (400)"


def test_openapi_descriptions_are_capped_and_clean() -> None:
    noisy = ("Get\x00 the\x1b[31m weather\r\nnow\t\u202eevil\u200b " + "word " * 1000)[:5000]
    assert len(noisy) == 5000
    doc = {"openapi": "3.0.0", "paths": {"/w/{city}": {"get": {
        "operationId": "weather", "summary": noisy, "description": "unused",
        "parameters": [
            {"name": "city", "in": "path", "description": noisy, "schema": {"type": "string"}},
            {"name": "units", "in": "query",
             "schema": {"type": "string", "description": noisy}}],
        "requestBody": {"content": {"application/json": {"schema": {
            "type": "object", "properties": {"note": {"type": "string",
                                                      "description": noisy}}}}}},
    }, "post": {"description": "\x07" * 10}}}}
    import json

    ops, _ = load_operations(json.dumps(doc), 1_000_000)
    tools = api_tools("weather", "http://127.0.0.1:9", ops)
    texts = [tools[0].description,
             tools[0].parameters["properties"]["city"]["description"],
             tools[0].parameters["properties"]["units"]["description"],
             tools[0].parameters["properties"]["body"]["properties"]["note"]["description"]]
    for text in texts:
        assert 0 < len(text) <= MAX_DESCRIPTION
        assert not CONTROL.search(text) and "\u202e" not in text and "\u200b" not in text
        assert "  " not in text and text == text.strip()
        assert text.startswith("Get the [31m weather now evil word")
    assert tools[1].description == "POST /w/{city}"  # a description of only control chars
    assert describe("a\nb\tc") == "a b c" and describe(None) == ""
    assert describe("x" * 301)[-1] == "…"
    assert len(describe("x" * 5000)) == MAX_DESCRIPTION
