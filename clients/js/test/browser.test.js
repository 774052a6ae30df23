// The module in a real page: headless Chromium loads it from an HTTP server of this test (so the page's origin
// is not the listener's), and the page reports what it received by POSTing it back here.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync } from "node:fs";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

import { CHROMIUM, assertIncreasing, startEngine, which } from "./support.js";

const MODULE = join(dirname(fileURLToPath(import.meta.url)), "..", "progress-client.js");

const PAGE = `<!doctype html>
<meta charset="utf-8">
<title>progress-client in a page</title>
<script type="module">
  const report = (kind, body = {}) => fetch("/report", { method: "POST", body: JSON.stringify({ kind, ...body }) });
  addEventListener("error", (e) => report("error", { message: String(e.message) }));
  addEventListener("unhandledrejection", (e) => report("error", { message: String(e.reason) }));
  const { ProgressClient } = await import("/progress-client.js");
  const params = new URLSearchParams(location.search);
  const client = new ProgressClient({ url: params.get("engine") });
  const seqs = [];
  const states = [];
  client.on("state", (state) => states.push(state));
  client.on("update", (m) => {
    seqs.push(m.seq);
    if (m.data.status === "completed") report("done", { seqs, states, status: m.data.status });
  });
  await client.subscribe([params.get("task")]);
  report("subscribed");
</script>
`;

function missing() {
  if (which(CHROMIUM)) return false;
  const message = `${CHROMIUM} is missing: the browser test needs Debian's chromium`;
  if (process.env.PROGRESS_SKIP_BROWSER_TESTS === "1") return message;
  throw new Error(message + "; set PROGRESS_SKIP_BROWSER_TESTS=1 to skip it");
}

test("headless Chromium: the page subscribes and receives every update in order", { skip: missing(), timeout: 30000 },
  async (t) => {
    const engine = await startEngine({ listen: "127.0.0.1:0", throttle_ms: 20 });
    t.after(() => engine.stop());
    await engine.send("create", { task_id: "in-browser" });

    const reports = [];
    let arrived = () => {};
    const server = createServer((req, res) => {
      if (req.method === "POST" && req.url === "/report") {
        let body = "";
        req.on("data", (chunk) => (body += chunk));
        req.on("end", () => {
          reports.push(JSON.parse(body));
          arrived();
          res.end();
        });
      } else if (req.url === "/progress-client.js") {
        res.setHeader("Content-Type", "text/javascript");
        res.end(readFileSync(MODULE));
      } else {
        res.setHeader("Content-Type", "text/html");
        res.end(PAGE);
      }
    });
    await new Promise((ok) => server.listen(0, "127.0.0.1", ok));
    t.after(() => server.close());
    const report = (kind) => new Promise((ok, fail) => {
      arrived = () => {
        const error = reports.find((r) => r.kind === "error");
        if (error) fail(new Error(`the page: ${error.message}`));
        const found = reports.find((r) => r.kind === kind);
        if (found) ok(found);
      };
      arrived();
    });

    const page = `http://127.0.0.1:${server.address().port}/?engine=${encodeURIComponent(engine.url)}&task=in-browser`;
    // Its own process group: whatever a SIGTERM leaves of its helper processes goes with the group.
    const chromium = spawn(CHROMIUM, ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
      "--no-first-run", "--no-default-browser-check", "--disable-background-networking", "--disable-component-update",
      `--user-data-dir=${mkdtempSync(join(tmpdir(), "progress-client-chromium-"))}`, page],
    { stdio: "ignore", detached: true });
    t.after(async () => {
      const exited = new Promise((ok) => chromium.once("exit", ok));
      chromium.kill("SIGTERM");
      await Promise.race([exited, new Promise((ok) => setTimeout(ok, 5000).unref())]);
      try {
        process.kill(-chromium.pid, "SIGKILL");
      } catch {
        // the group is gone already
      }
    });

    await report("subscribed");
    const { final } = await engine.send("run", { task_ids: ["in-browser"], steps: 30, interval: 0.005 });
    const done = await report("done");
    assert.equal(done.seqs.at(-1), final["in-browser"]);
    assertIncreasing(done.seqs, "in-browser");
    assert.ok(done.seqs.length > 3, `${done.seqs}`);
    assert.deepEqual(done.states, ["open"]);
  });
