"""The dashboard's files as the listener serves them (plain HTTP, no browser): content types, cache headers,
nosniff and CSP, no token needed for them, the embedded copy up to date, content-hashed URLs from the page to its
script and from the script to the JavaScript client, and no markup built from data."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys

import pytest

from dashboard_support import ROOT, http

DASHBOARD = ROOT / "dashboard"
CLIENT = ROOT / "clients" / "js" / "progress-client.js"
CSP = ("default-src 'self'; img-src 'self' data:; connect-src 'self' ws: wss:; style-src 'self'; "
       "script-src 'self'; frame-ancestors 'none'")

ASSETS = [
    ("/", DASHBOARD / "index.html", "text/html; charset=utf-8", "no-cache"),
    ("/index.html", DASHBOARD / "index.html", "text/html; charset=utf-8", "no-cache"),
    ("/dashboard/app.js", DASHBOARD / "app.js", "text/javascript; charset=utf-8", "max-age="),
    ("/dashboard/app.css", DASHBOARD / "app.css", "text/css; charset=utf-8", "max-age="),
    ("/dashboard/progress-client.js", CLIENT, "text/javascript; charset=utf-8", "max-age="),
]
#: A URL of the dashboard's files with its content hash, as embed-dashboard.py writes them into what refers to them.
VERSIONED = re.compile(r'"(/dashboard/[\w.-]+)\?v=([0-9a-f]{12})"')


@pytest.mark.parametrize("path,source,content_type,cache", ASSETS)
def test_assets_served_with_types_and_cache_headers(trackers, path, source, content_type, cache):
    tracker = trackers(auth_token="s3cret")  # the page's files need no token: they hold no data
    r = http(tracker.port, path)
    assert r.status == 200, r
    assert r.headers["content-type"] == content_type
    assert cache in r.headers["cache-control"]
    if cache == "max-age=":
        assert int(re.search(r"max-age=(\d+)", r.headers["cache-control"]).group(1)) > 0
        assert "no-store" not in r.headers["cache-control"]
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["content-security-policy"] == CSP
    # The embedded copy is the checked-in file, one source for each (the client is not copied into dashboard/):
    # embed-dashboard.py strips trailing newlines and adds the content hashes to the URLs of the other files.
    expected = source.read_text(encoding="utf-8").rstrip("\n")
    assert VERSIONED.sub(r'"\1"', r.body.decode("utf-8")) == expected


def test_each_url_carries_the_hash_of_what_it_serves(trackers):
    """What lets the assets be cached for good: a new script, style or client is a new URL, down the chain from the
    page (index.html → app.js, app.css; app.js → progress-client.js)."""
    tracker = trackers()
    named = {}
    pending = ["/"]
    while pending:
        body = http(tracker.port, pending.pop()).body.decode("utf-8")
        for path, digest in VERSIONED.findall(body):
            served = http(tracker.port, f"{path}?v={digest}").body
            assert hashlib.sha256(served).hexdigest()[:12] == digest, path
            named[path] = digest
            pending.append(path)
    assert sorted(named) == ["/dashboard/app.css", "/dashboard/app.js", "/dashboard/progress-client.js"]
    js = http(tracker.port, "/dashboard/app.js").body.decode("utf-8")
    assert re.findall(r'^import .* from "([^"]+)";$', js, re.M) == [
        f'/dashboard/progress-client.js?v={named["/dashboard/progress-client.js"]}']


def test_api_still_needs_the_token(trackers):
    tracker = trackers(auth_token="s3cret")
    assert http(tracker.port, "/api/v1/progress/tasks/x").status == 401
    assert http(tracker.port, "/api/v1/progress/tasks/x?token=s3cret").status == 404


def test_dashboard_can_be_turned_off(trackers):
    tracker = trackers(dashboard=False)
    assert http(tracker.port, "/").status == 404
    assert http(tracker.port, "/dashboard/app.js").status == 404
    assert http(tracker.port, "/dashboard/progress-client.js").status == 404


def test_embedded_copy_is_up_to_date():
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "embed-dashboard.py"), "--check"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr


def test_page_needs_no_inline_code_and_no_external_assets():
    html = (DASHBOARD / "index.html").read_text(encoding="utf-8")
    js = (DASHBOARD / "app.js").read_text(encoding="utf-8")
    css = (DASHBOARD / "app.css").read_text(encoding="utf-8")
    client = CLIENT.read_text(encoding="utf-8")
    # CSP allows only the page's own files: no inline scripts, styles or handlers.
    assert re.findall(r"<script\b[^>]*>", html) == ['<script type="module" src="/dashboard/app.js">']
    assert "<style" not in html
    assert not re.search(r"\sstyle\s*=", html)
    assert not re.search(r"\son[a-z]+\s*=", html)
    # Nothing fetched from elsewhere (the SVG namespace is a name, not a fetch).
    for name, text in (("index.html", html), ("app.js", js), ("app.css", css), ("progress-client.js", client)):
        urls = [u for u in re.findall(r"(?:https?:)?//[\w.-]+\.[a-z]{2,}[^\s\"')]*", text)
                if u != "http://www.w3.org/2000/svg"]
        assert urls == [], (name, urls)
    assert "@import" not in css


@pytest.mark.parametrize("source", [DASHBOARD / "app.js", CLIENT], ids=["app.js", "progress-client.js"])
def test_script_builds_no_markup_from_data(source):
    js = source.read_text(encoding="utf-8")
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function",
                 "setAttribute(\"on", "createContextualFragment"):
        assert sink not in js, sink
