"""CORS as a browser enforces it (docs/API.md, "CORS"): a page served by another server (Python's http.server on its
own port, so another origin) calls the engine's REST API with `fetch()` in headless Chromium. From an origin in
`allowed_origins` the page reads the answers, with the token in `Authorization` (which makes Chromium send a
preflight first); from any other origin Chromium refuses the page the same requests.

One page server, two origins: `http://127.0.0.1:PORT` and `http://localhost:PORT` are different origins to the
browser, though the same server."""

from __future__ import annotations

import functools
import http.server
import threading

import pytest

API = "/api/v1/progress"
TOKEN = "browser-T0ken"

#: Runs in the page: fetch(url, init) and report what the page could see, or that the browser refused it.
FETCH = """
const [url, headers, done] = arguments;
fetch(url, {headers}).then(
  async (r) => done({ok: true, status: r.status, body: await r.text()}),
  (e) => done({ok: false, error: String(e)}));
"""


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def page_server(tmp_path):
    """A static server of one blank page on a free port of 127.0.0.1 (the other origin)."""
    (tmp_path / "index.html").write_text("<!doctype html><title>another origin</title><p>app</p>")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(QuietHandler, directory=str(tmp_path)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def fetch(dash, url, headers=None):
    return dash.driver.execute_async_script(FETCH, url, headers or {})


def test_fetch_from_an_allowed_origin_reads_the_rest_api(dash, trackers, page_server):
    app = f"http://127.0.0.1:{page_server}"
    tracker = trackers(allowed_origins=[app], auth_token=TOKEN)
    tracker.create_task_progress_sync("cors-task", "stable-diffusion-xl", "image_generation")
    tracker.update_progress_sync("cors-task", 5, 10)
    dash.driver.get(app + "/")
    auth = {"Authorization": f"Bearer {TOKEN}"}

    # Authorization is no CORS-safelisted header: Chromium sends a preflight, then the GET.
    got = fetch(dash, f"{tracker.url}{API}/tasks/cors-task", auth)
    assert got["ok"] and got["status"] == 200, got
    assert '"task_id":"cors-task"' in got["body"].replace(" ", ""), got

    got = fetch(dash, f"{tracker.url}{API}/tasks/cors-task/history", auth)
    assert got["ok"] and got["status"] == 200 and '"events"' in got["body"], got

    # Errors are readable too (the page can tell a wrong token from a network failure).
    got = fetch(dash, f"{tracker.url}{API}/tasks/cors-task", {"Authorization": "Bearer wrong"})
    assert got["ok"] and got["status"] == 401 and "unauthorized" in got["body"], got
    got = fetch(dash, f"{tracker.url}{API}/tasks/cors-task?token={TOKEN}")  # no preflight: a simple request
    assert got["ok"] and got["status"] == 200, got


def test_fetch_from_another_origin_is_blocked(dash, trackers, page_server):
    allowed = f"http://127.0.0.1:{page_server}"
    other = f"http://localhost:{page_server}"
    tracker = trackers(allowed_origins=[allowed], auth_token=TOKEN)
    tracker.create_task_progress_sync("cors-task", "stable-diffusion-xl", "image_generation")
    dash.driver.get(other + "/")
    # With a preflight (refused with 403) and without one (answered, but the browser keeps it from the page).
    for url, headers in [(f"{tracker.url}{API}/tasks/cors-task", {"Authorization": f"Bearer {TOKEN}"}),
                         (f"{tracker.url}{API}/tasks/cors-task?token={TOKEN}", {}),
                         (f"{tracker.url}/healthz", {})]:
        got = fetch(dash, url, headers)
        assert not got["ok"] and "Failed to fetch" in got["error"], (url, got)
    # The same page's origin is fine once listed: what blocked it was the origin, nothing else.
    dash.driver.get(allowed + "/")
    got = fetch(dash, f"{tracker.url}/healthz")
    assert got["ok"] and got["status"] == 200, got


def test_without_allowed_origins_the_api_is_same_origin_only(dash, trackers, page_server):
    tracker = trackers()
    tracker.create_task_progress_sync("cors-task", "stable-diffusion-xl", "image_generation")
    dash.driver.get(f"http://127.0.0.1:{page_server}/")
    got = fetch(dash, f"{tracker.url}{API}/tasks/cors-task")
    assert not got["ok"], got
    # The engine's own page (the dashboard's origin) still reads it.
    dash.driver.get(tracker.url + "/")
    got = fetch(dash, f"{tracker.url}{API}/tasks/cors-task")
    assert got["ok"] and got["status"] == 200, got
