"""The web console (``/console``, puffer_cli/server/console.py) over plain HTTP: auth, escaping,
security headers, and that the JSON API is unchanged. The browser tests are in
tests/test_console_browser.py."""

from __future__ import annotations

import html
import re
import time

import puffer_cli
import pytest
from puffer_cli.server import console
from puffer_cli.server.app import ServeConfig, create_app
from starlette.testclient import TestClient

KEY = "console-key"
XSS = '"><script>alert(1)</script><img src=x onerror=alert(2)>'


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("console") / "store")
    ns = puffer_cli.connect(path).namespace("docs")
    rows = [{"id": i, "vector": [0.1 * i, 1.0], "title": f"doc {i}", "tags": ["a"]} for i in range(1, 6)]
    rows.append({"id": 7, "vector": [0.5, 0.5], "title": XSS, "tags": [XSS]})
    rows.append({"id": 8, "vector": [0.6, 0.5], "title": "long " + XSS * 20, "tags": []})
    ns.write({"upsert_rows": rows, "schema": {"title": {"type": "string", "full_text_search": True}}})
    return path


@pytest.fixture(scope="module")
def client(store):
    with TestClient(create_app(ServeConfig(store=store, api_key=KEY, commit_window_ms=0))) as c:
        yield c


def login(c: TestClient) -> None:
    r = c.post("/console/login", data={"key": KEY, "next": "/console"}, follow_redirects=False)
    assert r.status_code == 303, r.text
    c.cookies.update(r.cookies)


@pytest.mark.parametrize("path", ["/console", "/console/ns/docs", "/console/ns/docs?rank=id&top_k=3"])
def test_console_without_the_key_is_refused_with_the_login_form(client, path):
    client.cookies.clear()
    r = client.get(path)
    assert r.status_code == 401
    assert r.headers["content-type"].startswith("text/html")
    assert '<input id="key" name="key" type="password"' in r.text
    assert "doc 1" not in r.text and "<table" not in r.text  # nothing of the store shown
    # after logging in, the form sends you where you were going
    assert f'name="next" value="{console.h(path)}"' in r.text


def test_wrong_key_forged_or_expired_cookie_refused(client):
    client.cookies.clear()
    r = client.post("/console/login", data={"key": "nope"}, follow_redirects=False)
    assert r.status_code == 401 and "invalid API key" in r.text and "set-cookie" not in r.headers
    for token in ("", "garbage", f"{int(time.time()) + 3600}.{'0' * 64}", console.session_token("other-key", 2**40)):
        client.cookies.clear()
        client.cookies.set(console.COOKIE, token)
        assert client.get("/console").status_code == 401, token
    expired = console.session_token(KEY, int(time.time()) - 1)
    client.cookies.clear()
    client.cookies.set(console.COOKIE, expired)
    assert client.get("/console").status_code == 401
    client.cookies.clear()


def test_login_sets_a_session_cookie_not_the_key(client):
    client.cookies.clear()
    r = client.post("/console/login", data={"key": KEY, "next": "/console/ns/docs"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/console/ns/docs"
    cookie = r.headers["set-cookie"]
    assert KEY not in cookie
    for attr in ("HttpOnly", "SameSite=strict", "Path=/console", "Max-Age="):
        assert attr in cookie
    client.cookies.update(r.cookies)
    assert client.get("/console").status_code == 200
    # logging out drops it
    r = client.post("/console/logout", follow_redirects=False)
    assert r.status_code == 303 and 'puffer_console=""' in r.headers["set-cookie"]
    client.cookies.clear()


@pytest.mark.parametrize("nxt", ["https://evil.example/", "//evil.example/console", "/v1/namespaces", "/console\\x"])
def test_login_redirects_only_into_the_console(client, nxt):
    r = client.post("/console/login", data={"key": KEY, "next": nxt}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/console"
    client.cookies.clear()


def test_bearer_header_works_for_pages_and_the_api_ignores_the_cookie(client):
    client.cookies.clear()
    assert client.get("/console", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert client.get("/console", headers={"Authorization": "Bearer wrong"}).status_code == 401
    login(client)
    # the JSON API's behaviour is unchanged: the console's cookie is no key for it
    r = client.get("/v1/namespaces")
    assert r.status_code == 401 and r.json()["status"] == "error"
    assert client.get("/v1/namespaces", headers={"Authorization": f"Bearer {KEY}"}).json() == {
        "namespaces": [{"id": "docs"}]
    }
    client.cookies.clear()


def test_pages_escape_document_values_in_text_and_attributes(client):
    login(client)
    r = client.get("/console/ns/docs", params={"rank": "id", "top_k": "10"})
    assert r.status_code == 200, r.text
    assert "<script>" not in r.text and "<img src=x" not in r.text
    assert console.h(XSS) in r.text  # shown as text
    # the long value is cut in the cell and whole (escaped) in its title attribute
    assert re.search(r'<span title="long (&quot;&gt;&lt;script&gt;alert\(1\)&lt;/script&gt;[^"<>]*)+">', r.text)
    # what the user typed comes back escaped in the form's value attributes
    r = client.get("/console/ns/docs", params={"rank": "id", "where": XSS, "top_k": XSS})
    assert r.status_code == 400
    assert "<script>" not in r.text and f'value="{console.h(XSS)}"' in r.text
    client.cookies.clear()


def test_security_headers(client):
    login(client)
    for path in ("/console", "/console/ns/docs", "/console/ns/missing"):
        r = client.get(path)
        csp = r.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src" not in csp  # no script may run at all
        assert r.headers["x-frame-options"] == "DENY" and r.headers["cache-control"] == "no-store"
    assert client.get("/console/ns/missing").status_code == 404
    client.cookies.clear()


def test_query_errors_are_one_line_and_inline(client):
    login(client)
    cases = {
        "title =": "cannot parse where",
        "titel = 'x'": "unknown attribute 'titel'",
        "title = 'x' AND (": "cannot parse where",
    }
    for where, expect in cases.items():
        r = client.get("/console/ns/docs", params={"rank": "id", "where": where, "top_k": "5"})
        assert r.status_code == 400
        msg = re.search(r'<p class="error" role="alert"><strong>Error:</strong> ([^<]*)</p>', r.text)
        assert msg and expect in html.unescape(msg.group(1)), (where, msg and msg.group(1))
        assert "Traceback" not in r.text
    r = client.get("/console/ns/docs", params={"rank": "vector", "row_id": "12345", "top_k": "5"})
    assert r.status_code == 400 and "no row with id 12345" in r.text
    client.cookies.clear()


def test_query_vector_bm25_and_filter(client):
    login(client)
    r = client.get("/console/ns/docs", params={"rank": "vector", "row_id": "2", "top_k": "3"})
    assert r.status_code == 200
    assert re.search(r"<caption>3 rows: nearest 3 to row 2 by vector</caption>", r.text)
    assert "object store requests" in r.text and "cache temperature" in r.text
    r = client.get("/console/ns/docs", params={"rank": "bm25", "field": "title", "text": "doc", "where": "id >= 4"})
    assert r.status_code == 200
    ids = re.findall(r"<tr><td>(\d+)</td>", r.text)
    assert sorted(ids) == ["4", "5"]
    client.cookies.clear()


def test_verify_and_recall_on_demand(client):
    login(client)
    r = client.get("/console/ns/docs", params={"verify": "1"})
    assert "All 1 WAL entries are readable" in r.text
    r = client.get("/console/ns/docs", params={"recall": "1", "num": "3", "recall_k": "2"})
    assert re.search(r"<dt>recall</dt><dd>[01]\.\d{4}</dd>", r.text)
    client.cookies.clear()


def test_console_open_without_an_api_key(store):
    with TestClient(create_app(ServeConfig(store=store, commit_window_ms=0))) as c:
        r = c.get("/console")
        assert r.status_code == 200 and ">docs</a>" in r.text and "Log out" not in r.text
        assert c.get("/console/static/console.css").headers["content-type"].startswith("text/css")
