"""The web console in a real browser: Debian's chromium, headless, driven by selenium through
Debian's chromedriver (no browser download: .ci/run installs both with apt-get).

Skipped when chromium or chromedriver is missing, unless ``PUFFER_REQUIRE_BROWSER=1`` (set by
.ci/run), where a missing browser fails. ``PUFFER_CONSOLE_SCREENSHOTS=docs`` also writes the
screenshots docs/console.md shows (desktop and phone width) into that directory::

    PUFFER_CONSOLE_SCREENSHOTS=docs python -m pytest -n 0 tests/test_console_browser.py
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import puffer_cli
import pytest
from puffer_cli.server.app import ServeConfig

from .serve_proc import ThreadServer

KEY = "browser-key"
XSS = '<img src=x onerror="document.title=\'pwned\'"><script>document.title="pwned"</script>'
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
SHOTS = os.environ.get("PUFFER_CONSOLE_SCREENSHOTS")

WORDS = "quick brown fox jumps over lazy dog river stone light".split()


def _need_browser() -> None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(p)]
    if missing:
        msg = f"no {', '.join(missing)} (apt-get install chromium chromium-driver)"
        if os.environ.get("PUFFER_REQUIRE_BROWSER") == "1":
            pytest.fail(msg)
        pytest.skip(msg)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("console-browser") / "store")
    db = puffer_cli.connect(path)
    rows = [
        {
            "id": i,
            "vector": [((i * 7) % 11) / 11, ((i * 3) % 5) / 5, 1.0],
            "title": " ".join(WORDS[(i + k) % len(WORDS)] for k in range(3)),
            "lang": ["en", "de", "fr"][i % 3],
            "year": 1990 + i,
        }
        for i in range(1, 41)
    ]
    rows.append({"id": 99, "vector": [0.5, 0.5, 0.5], "title": XSS, "lang": XSS, "year": 0})
    docs = db.namespace("articles")
    docs.write({"upsert_rows": rows, "schema": {"title": {"type": "string", "full_text_search": True}}})
    docs.index()
    docs.write({"upsert_rows": [{"id": 41, "vector": [0.1, 0.2, 0.3], "title": "fresh row", "lang": "en"}]})
    db.namespace("glove-sample").write({"upsert_rows": [{"id": i, "vector": [i, 1.0]} for i in range(1, 4)]})
    s = ThreadServer(ServeConfig(store=path, api_key=KEY, commit_window_ms=0))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    _need_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--no-first-run",
        "--no-default-browser-check",
        "--window-size=1280,1000",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        opts.add_argument(arg)
    d = webdriver.Chrome(options=opts, service=Service(executable_path=CHROMEDRIVER))
    d.set_page_load_timeout(60)
    d.implicitly_wait(5)
    yield d
    d.quit()


def submit(d, action) -> None:
    """Run ``action`` (a click, or Enter in a form field) and wait for the page it loads: a
    marker set on the old page's window is gone and the new document is complete."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    d.execute_script("window.__pufferOldPage = true")
    action()
    WebDriverWait(d, 30, ignored_exceptions=(WebDriverException,)).until(
        lambda d: d.execute_script("return !window.__pufferOldPage && document.readyState === 'complete'")
    )


def by(d, css: str):
    from selenium.webdriver.common.by import By

    return d.find_element(By.CSS_SELECTOR, css)


def all_by(d, css: str):
    from selenium.webdriver.common.by import By

    return d.find_elements(By.CSS_SELECTOR, css)


def shot(d, name: str, width: int, height: int | None = None, at: str | None = None) -> None:
    """A screenshot at ``width`` CSS pixels (a phone's, with touch): the whole page, or one
    screen (``height``) scrolled to the element ``at``."""
    if not SHOTS:
        return
    mobile = width < 600
    metrics = {"width": width, "height": height or 800, "deviceScaleFactor": 1, "mobile": mobile}
    d.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    if at:
        d.execute_script("arguments[0].scrollIntoView()", by(d, at))
    else:
        metrics["height"] = height or min(d.execute_script("return document.documentElement.scrollHeight"), 2400)
        d.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    Path(SHOTS).mkdir(parents=True, exist_ok=True)
    d.save_screenshot(str(Path(SHOTS) / f"console-{name}.png"))
    d.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def labelled(d) -> list[str]:
    """Ids of visible form controls without a <label for=...>: must be none."""
    bad = []
    for el in all_by(d, "input, select"):
        if el.get_attribute("type") == "hidden":
            continue
        i = el.get_attribute("id")
        if not i or not all_by(d, f'label[for="{i}"]'):
            bad.append(i or el.get_attribute("name"))
    return bad


def test_console_in_a_browser(server, browser):
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    d = browser
    # 1. not logged in: the login form
    d.get(server.url + "/console")
    assert by(d, "h1").text == "Log in"
    assert labelled(d) == []
    key = by(d, "#key")
    assert d.switch_to.active_element == key  # focused: type the key and press Enter
    shot(d, "login-phone", 390, 700)
    submit(d, lambda: key.send_keys("not-the-key", Keys.ENTER))
    assert "invalid API key" in by(d, '[role="alert"]').text
    submit(d, lambda: by(d, "#key").send_keys(KEY, Keys.ENTER))

    # 2. the namespace list
    assert by(d, "h1").text == "Namespaces"
    table = by(d, "table")
    assert "2 namespaces" in by(d, "caption").text
    cells = {
        r.find_element("css selector", "td a").text: r.text for r in table.find_elements("css selector", "tbody tr")
    }
    assert set(cells) == {"articles", "glove-sample"}
    head = [th.text for th in table.find_elements("css selector", "th")]
    assert head[:3] == ["Namespace", "Rows (approx.)", "Last seq"] and "Unindexed WAL entries" in head
    # articles: 42 rows, index generation 1 covering seq 1, one WAL entry after it
    assert cells["articles"].split()[:6] == ["articles", "42", "2", "1", "1", "1"], cells["articles"]
    shot(d, "namespaces-desktop", 1280, 520)
    shot(d, "namespaces-phone", 390, 700)

    # 3. open a namespace (keyboard: focus the link, press Enter)
    link = by(d, 'tbody a[href$="/ns/articles"]')
    submit(d, lambda: link.send_keys(Keys.ENTER))
    assert by(d, "h1").text == "articles"
    assert [h.text for h in all_by(d, "h2")] == ["Overview", "Index", "Schema", "Query", "WAL health", "Recall"]
    schema = by(d, 'div[aria-label="Schema"]').text
    assert "title" in schema and "[3]f32" in schema
    assert labelled(d) == []

    # 4. a vector query from an existing row's id, with a filter
    Select(by(d, "#rank")).select_by_value("vector")
    by(d, "#row_id").send_keys("3")
    by(d, "#where").send_keys("lang = 'en' OR id = 3")
    top_k = by(d, "#top_k")
    top_k.clear()
    submit(d, lambda: top_k.send_keys("5", Keys.ENTER))
    results = by(d, 'div[aria-label="Query results"]')
    rows = results.find_elements("css selector", "tbody tr")
    assert len(rows) == 5
    assert rows[0].find_elements("css selector", "td")[0].text == "3"  # the row itself is nearest
    assert all(r.find_elements("css selector", "td")[0].text == "3" or " en " in f" {r.text} " for r in rows)
    perf = by(d, "dl.perf").text
    for label in ("object store requests", "object store round trips", "object store bytes read", "cache temperature"):
        assert label in perf
    # the form keeps what was typed
    assert by(d, "#where").get_attribute("value") == "lang = 'en' OR id = 3"
    shot(d, "query-desktop", 1280)
    shot(d, "query-phone", 390, 844, at="#results")

    # 5. BM25 on a chosen field
    Select(by(d, "#rank")).select_by_value("bm25")
    by(d, "#where").clear()
    submit(d, lambda: by(d, "#text").send_keys("river", Keys.ENTER))
    rows = all_by(d, 'div[aria-label="Query results"] tbody tr')
    assert rows and all("river" in r.text for r in rows)

    # 6. a bad filter: the one-line error, inline, the form still there
    submit(d, lambda: by(d, "#where").send_keys("lang = 'en' AND (", Keys.ENTER))
    err = by(d, '#results [role="alert"]')
    assert err.text.startswith("Error: cannot parse where") and "\n" not in err.text
    assert by(d, "#where").get_attribute("value") == "lang = 'en' AND ("
    shot(d, "error-phone", 390, 600, at="#where")
    by(d, "#where").clear()
    submit(d, lambda: by(d, "#where").send_keys("lnag = 'en'", Keys.ENTER))
    assert "unknown attribute 'lnag' (did you mean 'lang'?)" in by(d, '#results [role="alert"]').text

    # 7. a hostile document value is text, not markup (no image, no script ran)
    Select(by(d, "#rank")).select_by_value("id")
    by(d, "#where").clear()
    submit(d, lambda: by(d, "#where").send_keys("id = 99", Keys.ENTER))
    assert XSS in by(d, 'div[aria-label="Query results"] tbody').text
    assert not all_by(d, "main img, main script") and d.title != "pwned"

    # 8. WAL verify and recall, on demand
    submit(d, by(d, "#h-wal ~ form button").click)
    assert "All 2 WAL entries are readable." in by(d, "#wal").text
    submit(d, by(d, "#h-recall ~ form button").click)
    assert "recall" in by(d, "#recall dl").text

    # 9. usable on a phone: nothing wider than the screen (tables scroll inside their region)
    d.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride", {"width": 360, "height": 740, "deviceScaleFactor": 1, "mobile": True}
    )
    try:
        for path in ("/console", "/console/ns/articles?rank=id&top_k=20"):
            d.get(server.url + path)
            assert d.execute_script("return document.documentElement.scrollWidth <= window.innerWidth"), path
    finally:
        d.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})

    # 10. log out: back to the login form
    d.get(server.url + "/console")
    submit(d, by(d, "header form button").click)
    assert by(d, "h1").text == "Log in"
