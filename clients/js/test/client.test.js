// The client against a real engine (test/engine.py: the Python binding with an embedded listener).

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { ProgressClient, ProgressError } from "../progress-client.js";
import { NO_SAMPLES, assertIncreasing, record, startEngine, waitFor } from "./support.js";

let engine;
const clients = [];
before(async () => {
  engine = await startEngine({ listen: "127.0.0.1:0", throttle_ms: 20, ...NO_SAMPLES });
});
after(async () => {
  for (const c of clients) c.close();
  await engine.stop();
});

function client(options = {}) {
  const c = new ProgressClient({ url: engine.url, ...options });
  clients.push(c);
  return c;
}

test("one task: its current state on subscribe, then every update once and in seq order", async () => {
  await engine.send("create", { task_id: "one" });
  await engine.send("create", { task_id: "not-watched" });
  const c = client({ clientId: "node-one" });
  const log = record(c);
  assert.equal(c.state, "connecting");
  assert.deepEqual(await c.subscribe("one"), ["one"]);
  assert.equal(c.state, "open");
  assert.equal(c.clientId, "node-one");
  await waitFor(() => log.updates.length > 0, "the current state");
  assert.equal(log.updates[0].task_id, "one");
  assert.equal(log.updates[0].data.status, "queued");
  const { final } = await engine.send("run", { task_ids: ["one", "not-watched"], steps: 40, interval: 0.005 });
  await waitFor(() => log.last("one").seq === final.one, "the final state");
  assert.equal(log.last("one").data.status, "completed");
  assert.equal(log.last("one").data.overall_progress, 100);
  assertIncreasing(log.seqs("one"), "one");
  // Coalesced by throttle_ms, but more than the first and the last state.
  assert.ok(log.updates.length > 3, `${log.updates.length} updates`);
  assert.ok(log.updates.every((m) => m.task_id === "one" && m.type === "progress.update"));
  assert.deepEqual(log.states, ["open"]);
  assert.deepEqual(log.errors, []);
});

test('"*": every task, those made after the subscribe too', async () => {
  await engine.send("create", { task_id: "star-a" });
  const c = client();
  const log = record(c);
  await c.subscribe("*");
  await waitFor(() => log.last("star-a"), "star-a's current state");
  await waitFor(() => log.last("one"), "an earlier task's state");
  await engine.send("create", { task_id: "star-b" });
  const { final } = await engine.send("run", { task_ids: ["star-a", "star-b"], steps: 10, interval: 0.005 });
  await waitFor(() => log.last("star-a")?.seq === final["star-a"] && log.last("star-b")?.seq === final["star-b"],
    "both final states");
  assertIncreasing(log.seqs("star-a"), "star-a");
  assertIncreasing(log.seqs("star-b"), "star-b");
  assert.equal(log.updates.filter((m) => m.task_id === "one").length, 1, "a finished task is sent once");
});

test("getProgress, getBatchProgress, logs, errors and unsubscribe", async () => {
  await engine.send("create", { task_id: "b-1", batch_id: "batch-x" });
  await engine.send("create", { task_id: "b-2", batch_id: "batch-x" });
  const c = client();
  const log = record(c);
  // Asked before the connection is open: sent once it is.
  const progress = c.getProgress("b-1");
  assert.equal((await progress).task_id, "b-1");
  const batch = await c.getBatchProgress("batch-x");
  assert.equal(batch.total_tasks, 2);
  assert.deepEqual(Object.keys(batch.tasks).sort(), ["b-1", "b-2"]);
  assert.deepEqual((await c.getBatchProgress("batch-x", ["b-2", "nope"])).missing, ["nope"]);
  await assert.rejects(c.getProgress("no-such-task"), (e) => e instanceof ProgressError && e.code === "not_found");
  await assert.rejects(c.subscribe(["bad\nid"]), (e) => e.code === "invalid_message");

  await c.subscribe(["b-1", "b-2"]);
  await waitFor(() => log.last("b-1") && log.last("b-2"), "the current states");
  await engine.send("log", { task_id: "b-1", message: "hello from the runner" });
  await waitFor(() => log.logs.length === 1, "the log entry");
  assert.equal(log.logs[0].task_id, "b-1");
  assert.equal(log.logs[0].entry.message, "hello from the runner");

  await c.unsubscribe("b-2");
  const before = log.updates.length;
  await engine.send("update", { task_id: "b-2", step: 1, total: 2 });
  await engine.send("update", { task_id: "b-1", step: 1, total: 2 });
  await waitFor(() => log.updates.length > before, "b-1's update");
  assert.deepEqual(log.updates.slice(before).map((m) => m.task_id), ["b-1"]);
  assert.deepEqual(log.errors, []);
});

test("a handler's exception does not stop the others or the client; it is rethrown outside", async () => {
  await engine.send("create", { task_id: "throws" });
  const c = client();
  const seen = [];
  const rethrown = [];
  // The client rethrows in a microtask (an uncaught error, which would end this test run): catch it there.
  const queueMicrotask = globalThis.queueMicrotask;
  globalThis.queueMicrotask = (task) => queueMicrotask(() => {
    try {
      task();
    } catch (e) {
      rethrown.push(e);
    }
  });
  try {
    const off = c.on("update", () => {
      throw new Error("handler bug");
    });
    c.on("update", (m) => seen.push(m.seq));
    await c.subscribe("throws");
    await waitFor(() => seen.length === 1, "the second handler");
    off();
    await engine.send("update", { task_id: "throws", step: 1, total: 2 });
    await waitFor(() => seen.length === 2, "the next update");
    assert.deepEqual(rethrown.map((e) => e.message), ["handler bug"]);
  } finally {
    globalThis.queueMicrotask = queueMicrotask;
  }
});

test("close() rejects what is pending and stops for good", async () => {
  const c = client();
  const log = record(c);
  const pending = c.subscribe("never-answered");
  c.close();
  await assert.rejects(pending, (e) => e.code === "closed");
  await assert.rejects(c.getProgress("one"), (e) => e.code === "closed");
  assert.equal(c.state, "closed");
  assert.deepEqual(log.states, ["closed"]);
  c.close();
});

test("the URL: http(s) and ws(s) base URLs, with a path prefix; other schemes refused", () => {
  const urls = [];
  const url = (options) => {
    new ProgressClient({ WebSocket: class { constructor(u) { urls.push(u); } }, ...options });
    return urls.at(-1);
  };
  assert.equal(url({ url: "http://h:8000" }), "ws://h:8000/api/v1/progress/ws");
  assert.equal(url({ url: "https://h/proxy/" }), "wss://h/proxy/api/v1/progress/ws");
  assert.equal(url({ url: "ws://h:1", token: "a b&c", clientId: "me" }),
    "ws://h:1/api/v1/progress/ws?client_id=me&token=a+b%26c");
  assert.throws(() => url({ url: "ftp://h" }), TypeError);
  assert.throws(() => url({}), TypeError);
});

test("a URL the runtime refuses: an error event and closed, not a retry loop", async () => {
  const refused = new Error("SecurityError: insecure WebSocket from a secure page");
  const c = new ProgressClient({ url: "ws://h:1", WebSocket: class { constructor() { throw refused; } } });
  const log = record(c);
  await assert.rejects(c.subscribe("a"), (e) => e === refused);
  assert.equal(c.state, "closed");
  assert.deepEqual(log.errors, [refused]);
  assert.deepEqual(log.states, ["closed"]);
});

test('a page on "*" forgets the oldest finished tasks past 5,000: the client does not grow with the fleet', { timeout: 60000 },
  async (t) => {
    const engine = await startEngine({ listen: "127.0.0.1:0", ...NO_SAMPLES });
    t.after(() => engine.stop());
    const c = new ProgressClient({ url: engine.url });
    t.after(() => c.close());
    let finished = 0;
    c.on("update", (m) => { if (m.data.status === "completed") finished += 1; });
    await c.subscribe("*");
    const batches = [0, 1, 2].map((b) => Array.from({ length: 3000 }, (_, i) => `b${b}-${i}`));
    for (const ids of batches) {
      await engine.send("create_many", { task_ids: ids });
      await engine.send("complete_many", { task_ids: ids });
      await waitFor(() => finished >= 3000 * (batches.indexOf(ids) + 1), "the batch finished", 60000);
    }
    // Past 5,000 finished, the least recently updated are forgotten, down to 2,500; the open ones never are.
    assert.ok(c._tasks.size <= 6500, `${c._tasks.size} tasks kept`);
    assert.ok(!c._tasks.has("b0-0") && c._tasks.has("b2-2999"));
  });
