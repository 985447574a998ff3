"""The gateway against other sites: Host and Origin checks, and the headers every answer has."""

from __future__ import annotations

from tests.helpers import Gateway

CSP_PARTS = ("default-src 'self'", "script-src 'self';", "frame-ancestors 'none'",
             "object-src 'none'")


def test_host_outside_the_trusted_names_is_refused(gateway: Gateway) -> None:
    with gateway.client() as c:
        for host in ("evil.example", "rebound.attacker.test:8000", "127.0.0.2", "[::2]"):
            response = c.get("/healthz", headers={"Host": host})
            assert response.status_code == 400, (host, response.text)
            assert "detail" in response.json()
            assert response.headers["x-content-type-options"] == "nosniff"
        refused = c.post("/api/sessions", headers={"Host": "evil.example"})
        assert refused.status_code == 400 and "set-cookie" not in refused.headers
        for host in ("localhost", f"localhost:{gateway.port}", f"127.0.0.1:{gateway.port}",
                     "[::1]", f"[::1]:{gateway.port}", "LOCALHOST"):
            assert c.get("/healthz", headers={"Host": host}).status_code == 200, host


def test_cross_site_post_and_delete_are_refused(gateway: Gateway) -> None:
    ours = f"http://127.0.0.1:{gateway.port}"
    with gateway.client() as c:
        for origin in ("https://evil.example", f"http://localhost:{gateway.port}",
                       "http://127.0.0.1", f"https://127.0.0.1:{gateway.port}",
                       "http://127.0.0.1:1", "null"):
            response = c.post("/api/sessions", headers={"Origin": origin})
            assert response.status_code == 403, (origin, response.text)
            assert "detail" in response.json() and "set-cookie" not in response.headers
        created = c.post("/api/sessions", headers={"Origin": ours})
        assert created.status_code == 201, created.text
        sid = created.json()["session_id"]
        gone = c.delete(f"/api/sessions/{sid}", headers={"Origin": "https://evil.example"})
        assert gone.status_code == 403
        assert c.get(f"/api/sessions/{sid}/messages").status_code == 200  # still there
        # no Origin at all (curl, scripts) and a same-origin one are fine
        assert c.post("/api/sessions").status_code == 201
        assert c.delete(f"/api/sessions/{sid}", headers={"Origin": ours}).status_code == 204
        # a GET with a foreign Origin changes nothing: it is answered
        assert c.get("/healthz", headers={"Origin": "https://evil.example"}).status_code == 200


def test_security_headers_on_every_answer(gateway: Gateway) -> None:
    with gateway.client() as c:
        answers = [c.get("/"), c.get("/healthz"), c.get("/api/sessions/nope/messages"),
                   c.post("/api/sessions", content=b"x" * (2 * 1024 * 1024)),
                   c.post("/api/sessions", headers={"Origin": "https://evil.example"})]
        for response in answers:
            assert response.headers["x-content-type-options"] == "nosniff", response.url
            assert response.headers["referrer-policy"] in ("no-referrer", "same-origin")
        page = answers[0]
        assert page.status_code == 200
        assert page.headers["x-frame-options"] == "DENY"
        csp = page.headers["content-security-policy"]
        for part in CSP_PARTS:
            assert part in csp, csp
        assert "unsafe-inline" not in csp
        docs = c.get("/docs")
        assert docs.status_code == 200
        assert "frame-ancestors 'none'" in docs.headers["content-security-policy"]


def test_listen_host_decides_the_default(gateway: Gateway) -> None:
    """An explicit LLMCAM_TRUSTED_HOSTS wins over the loopback default."""
    from gateway.security import trusted_hosts

    settings = gateway.settings
    assert trusted_hosts(settings, "127.0.0.1") == ["localhost", "127.0.0.1", "[::1]"]
    assert trusted_hosts(settings, "0.0.0.0") == ["*"]
    chosen = settings.model_copy(update={"trusted_hosts": ["chat.example"]})
    assert trusted_hosts(chosen, "127.0.0.1") == ["chat.example"]


def test_docs_page_has_the_strict_csp(gateway: Gateway) -> None:
    """/docs and its files get the one CSP every answer gets: no inline script, no CDN."""
    import re

    from gateway.security import CSP

    with gateway.client() as c:
        for path in ("/docs", "/docs/assets/swagger-ui-bundle.js", "/docs/assets/start.js",
                     "/openapi.json"):
            response = c.get(path)
            assert response.status_code == 200, path
            csp = response.headers["content-security-policy"]
            assert csp == CSP, (path, csp)
            assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
            assert "cdn" not in csp and "https:" not in csp
            assert response.headers["x-frame-options"] == "DENY"
        page = c.get("/docs").text
        scripts = re.findall(r"<script\b[^>]*>", page)
        assert scripts and all('src="/docs/assets/' in tag for tag in scripts), scripts
        assert "cdn" not in page and "https://" not in page
