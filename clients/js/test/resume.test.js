// Reconnects where the missed events cannot all be replayed, which the client reports as `resync` events: an
// embedded listener restarted without Redis (it lost the task's history), a resume map too large to send.

import assert from "node:assert/strict";
import { test } from "node:test";

import { ProgressClient } from "../progress-client.js";
import { FAST_RECONNECT, NO_SAMPLES, assertIncreasing, countingSockets, freePort, record, startEngine, waitFor }
  from "./support.js";

const LIMIT = { timeout: 30000 };

test("an embedded listener restarted without its history: a resync event, and the refetch", LIMIT, async (t) => {
  const port = await freePort();
  let engine = await startEngine({ listen: `127.0.0.1:${port}`, ...NO_SAMPLES });
  await engine.send("create", { task_id: "phoenix" });
  for (let step = 1; step <= 8; step++) await engine.send("update", { task_id: "phoenix", step, total: 10 });
  const { task: before } = await engine.send("get", { task_id: "phoenix" });

  const c = new ProgressClient({ url: `ws://127.0.0.1:${port}`, ...FAST_RECONNECT });
  t.after(() => c.close());
  const log = record(c);
  const refetched = new Promise((ok) => c.on("resync", (event) => ok(c.getProgress(event.task_id))));
  await c.subscribe("phoenix");
  await waitFor(() => log.last("phoenix")?.seq === before.seq, "the task's state");

  // The runner dies and another one starts the task again: a new task under the same id, with a lower seq.
  await engine.kill();
  await waitFor(() => c.state === "connecting", "the client to see the listener gone");
  engine = await startEngine({ listen: `127.0.0.1:${port}`, ...NO_SAMPLES });
  t.after(() => engine.stop());
  await engine.send("create", { task_id: "phoenix" });
  await engine.send("update", { task_id: "phoenix", step: 1, total: 10 });
  const { task: now } = await engine.send("get", { task_id: "phoenix" });
  assert.ok(now.seq < before.seq);

  const fresh = await refetched;
  assert.deepEqual(log.resyncs.map((e) => e.last_seq), [before.seq]);
  assert.equal(fresh.created_at, now.created_at);
  await waitFor(() => log.last("phoenix").seq === now.seq, "the new task's state delivered");
  assert.equal(log.last("phoenix").data.stages[log.last("phoenix").data.current_stage].message, "s1");
});

// A listener restarted without its data can have a task made anew that reaches the very seq the client holds, or
// passes it: the listener takes the resume for that task's and sends its state as recovered (after replaying its
// events past the client's seq). The client tells the tasks apart by created_at: the new state is delivered, with
// a resync, in either mode of reading updates.
/**
 * A client holding task "twin" as `first` (given the engine) left it; the listener is then killed and restarted
 * without its data, and `again` (given the new engine and the state the client holds) makes "twin" anew there while
 * the client is kept away (a refused port), so that it reconnects only once the new task is where the test wants
 * it. Returns {log, before, now}: the client's record, the state it held, the new task's.
 */
async function restartedWithTwin(t, { lazyData, first, again }) {
  const port = await freePort();
  let engine = await startEngine({ listen: `127.0.0.1:${port}`, ...NO_SAMPLES });
  await engine.send("create", { task_id: "twin" });
  await first(engine);
  const { task: before } = await engine.send("get", { task_id: "twin" });
  let away = false;
  const Held = class extends WebSocket {
    constructor(url) {
      super(away ? "ws://127.0.0.1:1/" : url);
    }
  };
  const c = new ProgressClient({ url: `ws://127.0.0.1:${port}`, lazyData, WebSocket: Held, ...FAST_RECONNECT });
  t.after(() => c.close());
  const log = record(c);
  await c.subscribe("twin");
  await waitFor(() => log.last("twin")?.seq === before.seq, "the task's state");

  away = true;
  await engine.kill();
  await waitFor(() => c.state === "connecting", "the client to see the listener gone");
  engine = await startEngine({ listen: `127.0.0.1:${port}`, ...NO_SAMPLES });
  t.after(() => engine.stop());
  await engine.send("create", { task_id: "twin" });
  const now = await again(engine, before);
  assert.notEqual(now.created_at, before.created_at);
  away = false;
  return { log, before, now };
}

const steps = (n, total) => async (engine) => {
  for (let step = 1; step <= n; step++) await engine.send("update", { task_id: "twin", step, total });
  return (await engine.send("get", { task_id: "twin" })).task;
};

for (const lazyData of [false, true]) {
  for (const [name, ahead] of [["at the seq the client holds", 0], ["past the seq the client holds", 2]]) {
    test(`a listener restarted with the task made anew ${name}${lazyData ? " (lazyData)" : ""}`, LIMIT, async (t) => {
      const { log, before, now } = await restartedWithTwin(t, { lazyData, first: steps(4, 10),
        again: steps(4 + ahead, 20) });
      assert.equal(now.seq, before.seq + ahead);
      await waitFor(() => log.resyncs.length > 0, "a resync for the task made anew");
      assert.deepEqual(log.resyncs.map((e) => [e.task_id, e.last_seq]), [["twin", before.seq]]);
      await waitFor(() => log.last("twin").seq === now.seq && log.last("twin").data.created_at === now.created_at,
        "the new task's state delivered");
      assert.equal(log.last("twin").data.overall_progress, now.overall_progress);
      assertIncreasing(log.seqs("twin").slice(1), "the new task's states");
    });
  }
}

test("a finished task's id made anew at the same seq after a listener restart (lazyData)", LIMIT, async (t) => {
  const finished = async (engine) => {
    await steps(3, 10)(engine);
    await engine.send("complete", { task_id: "twin" });
  };
  const toTheSameSeq = async (engine, before) => {
    let now = (await engine.send("get", { task_id: "twin" })).task;
    for (let step = 1; now.seq < before.seq; step++) {
      await engine.send("update", { task_id: "twin", step, total: 20 });
      now = (await engine.send("get", { task_id: "twin" })).task;
    }
    return now;
  };
  const { log, before, now } = await restartedWithTwin(t, { lazyData: true, first: finished, again: toTheSameSeq });
  assert.equal(now.seq, before.seq);
  // Not resumed (it was finished): its state comes as sent again, without a flag, and is the new task's.
  await waitFor(() => log.last("twin").data.created_at === now.created_at, "the new task's state delivered");
  assert.equal(log.last("twin").data.status, now.status);
  assert.deepEqual(log.resyncs.map((e) => [e.task_id, e.last_seq]), [["twin", before.seq]]);
});

test("a resume map over max_message_bytes: subscribed again without it, the gaps reported", LIMIT, async (t) => {
  const engine = await startEngine({ listen: "127.0.0.1:0", max_message_bytes: 1024, ...NO_SAMPLES });
  t.after(() => engine.stop());
  // 40 open tasks: a resume map of about 1,700 bytes.
  const ids = Array.from({ length: 40 }, (_, i) => `a-task-with-a-long-enough-id-${i}`);
  for (const id of ids) {
    await engine.send("create", { task_id: id });
    await engine.send("update", { task_id: id, step: 1, total: 10 });
  }
  const { sockets, Counted } = countingSockets();
  // Reconnects 0.3-0.6 s apart: time enough to change tasks while the client is away, even on a loaded machine.
  const c = new ProgressClient({ url: engine.url, WebSocket: Counted, minReconnectDelay: 600, maxReconnectDelay: 600 });
  t.after(() => c.close());
  const log = record(c);
  await c.subscribe("*");
  await waitFor(() => ids.every((id) => log.last(id)), "every task");

  sockets[0].close(); // the network drops the connection
  await waitFor(() => c.state === "connecting", "the client to see it");
  const changed = ids.slice(0, 5);
  for (const id of changed) {
    for (const step of [2, 3]) await engine.send("update", { task_id: id, step, total: 10 });
  }
  const finals = await Promise.all(changed.map((id) => engine.send("get", { task_id: id })));
  await waitFor(() => changed.every((id, i) => log.last(id).seq === finals[i].task.seq), "the changed tasks");

  assert.equal(sockets.length, 3, "the refused subscribe, then one without the resume map");
  assert.deepEqual(log.states, ["open", "connecting", "open", "connecting", "open"]);
  assert.deepEqual(log.resyncs.map((e) => e.task_id).sort(), [...changed].sort());
  for (const id of ids) assertIncreasing(log.seqs(id), id);
  assert.equal(log.updates.length, ids.length + changed.length, "an unchanged task delivered twice");
  assert.deepEqual(log.errors, []);
});

test("subscribe() with ids over the listener's max_message_bytes: frames it takes, one answer", LIMIT, async (t) => {
  // 64 KiB, the default: a call's ids went in one frame, which the listener refused (1009), then again on every
  // reconnect, for good, the call never answered.
  const engine = await startEngine({ listen: "127.0.0.1:0", ...NO_SAMPLES });
  t.after(() => engine.stop());
  const ids = Array.from({ length: 900 },
    (_, i) => `a-task-id-that-is-long-enough-for-900-of-them-to-fill-more-than-64-kib-${String(i).padStart(4, "0")}`);
  assert.ok(JSON.stringify({ type: "subscribe", task_ids: ids }).length > 65536);
  const { sockets, Counted } = countingSockets();
  const c = new ProgressClient({ url: engine.url, WebSocket: Counted, ...FAST_RECONNECT });
  t.after(() => c.close());
  const log = record(c);
  assert.deepEqual(await c.subscribe(ids), ids);
  await engine.send("create", { task_id: ids.at(-1) });
  await engine.send("update", { task_id: ids.at(-1), step: 1, total: 2 });
  await waitFor(() => log.last(ids.at(-1))?.data.overall_progress > 0, "an update of the last id");
  assert.equal(sockets.length, 1, "no frame was refused");
  assert.deepEqual(log.errors, []);
});

test("a listener whose max_message_bytes is below the client's frames: they are cut until it takes them", LIMIT,
  async (t) => {
    const engine = await startEngine({ listen: "127.0.0.1:0", max_message_bytes: 4096, ...NO_SAMPLES });
    t.after(() => engine.stop());
    const ids = Array.from({ length: 150 }, (_, i) => `task-with-a-forty-byte-long-id-${String(i).padStart(8, "0")}`);
    const { sockets, Counted } = countingSockets();
    const c = new ProgressClient({ url: engine.url, WebSocket: Counted, ...FAST_RECONNECT });
    t.after(() => c.close());
    const log = record(c);
    // One call of about 6.6 KB: refused once, then sent again in frames of half that, and answered.
    assert.deepEqual(await c.subscribe(ids), ids);
    assert.equal(sockets.length, 2);
    // Three more calls, each within the bound: on a reconnect all four calls' ids are restored, in frames the
    // listener takes.
    const more = [1, 2, 3].map((k) => ids.map((id) => `${id}-${k}`).slice(0, 60));
    for (const part of more) await c.subscribe(part);
    c.reconnect();
    await waitFor(() => c.state === "open" && log.states.at(-1) === "open", "back, subscribed");
    await engine.send("create", { task_id: more[2][59] });
    await engine.send("update", { task_id: more[2][59], step: 1, total: 2 });
    await waitFor(() => log.last(more[2][59])?.data.overall_progress > 0, "an update of a restored id");
    assert.ok(sockets.length <= 4, `${sockets.length} connections`);
    assert.deepEqual(log.errors, []);
  });

test("a listener that refuses every subscribe frame the client can make: closed, with the error", LIMIT, async (t) => {
  const engine = await startEngine({ listen: "127.0.0.1:0", max_message_bytes: 256, ...NO_SAMPLES });
  t.after(() => engine.stop());
  const ids = Array.from({ length: 40 }, (_, i) => `task-with-a-forty-byte-long-id-${String(i).padStart(8, "0")}`);
  const { sockets, Counted } = countingSockets();
  const c = new ProgressClient({ url: engine.url, WebSocket: Counted, ...FAST_RECONNECT });
  t.after(() => c.close());
  const log = record(c);
  await assert.rejects(c.subscribe(ids), (error) => error.code === "message_too_large");
  assert.equal(c.state, "closed");
  assert.deepEqual(log.errors.map((e) => e.code), ["message_too_large"]);
  assert.ok(sockets.length <= 3, `${sockets.length} connections`);
});
