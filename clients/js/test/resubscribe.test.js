// What a new connection subscribes to, and what the client does with what crossed a subscribe on the wire: each
// subscribe() made while disconnected is answered on its own, the resubscribe fits the listener's frame limit, and
// a delta subscription switched off stays off.

import assert from "node:assert/strict";
import { test } from "node:test";

import { ProgressClient } from "../progress-client.js";
import { FAST_RECONNECT, NO_SAMPLES, assertIncreasing, record, recordingSubscribes, sleep, startEngine, waitFor }
  from "./support.js";

const LIMIT = { timeout: 30000 };

/** Keeps this thread busy for `ms`, so that what the listener sends meanwhile waits unread in the socket. */
function busy(ms) {
  const until = Date.now() + ms;
  while (Date.now() < until);
}

test("a subscribe refused while disconnected takes only its own tasks with it", LIMIT, async (t) => {
  const engine = await startEngine({ listen: "127.0.0.1:0", throttle_ms: 0, ...NO_SAMPLES });
  t.after(() => engine.stop());
  await engine.send("create", { task_id: "render-a" });
  const client = new ProgressClient({ url: engine.url, ...FAST_RECONNECT });
  t.after(() => client.close());
  const log = record(client);
  await client.subscribe("render-a");
  await engine.send("update", { task_id: "render-a", step: 1, total: 100 });
  await waitFor(() => log.last("render-a")?.data.stages["1"]?.message === "s1", "step 1");
  client.reconnect(300);
  // While away, one more task whose id the listener refuses (over 256 characters). It used to share the
  // resubscribe's frame: refused as a whole, render-a was no longer subscribed on the listener, without a word.
  const bad = await client.subscribe("job-" + "x".repeat(300)).then(() => "ok", (e) => e.code);
  assert.equal(bad, "invalid_message");
  await waitFor(() => client.state === "open", "the reconnect");
  for (let step = 2; step <= 4; step++) await engine.send("update", { task_id: "render-a", step, total: 100 });
  await waitFor(() => log.last("render-a")?.data.stages["1"]?.message === "s4", "the steps after the reconnect");
  assertIncreasing(log.seqs("render-a"), "render-a");
});

test("subscribe() calls made before the first connection are answered each on its own", LIMIT, async (t) => {
  const engine = await startEngine({ listen: "127.0.0.1:0", throttle_ms: 0, ...NO_SAMPLES });
  t.after(() => engine.stop());
  await engine.send("create", { task_id: "render-a" });
  const client = new ProgressClient({ url: engine.url });
  t.after(() => client.close());
  const good = client.subscribe("render-a").then(() => "ok", (e) => e.code);
  const bad = client.subscribe("job-" + "x".repeat(300)).then(() => "ok", (e) => e.code);
  assert.deepEqual(await Promise.all([good, bad]), ["ok", "invalid_message"]);
  const log = record(client);
  await engine.send("update", { task_id: "render-a", step: 1, total: 100 });
  await waitFor(() => log.last("render-a")?.data.stages["1"]?.message === "s1", "render-a watched");
});

test("a resubscribe of more ids than one frame holds goes in several, and the connection stays", LIMIT, async (t) => {
  const engine = await startEngine({ listen: "127.0.0.1:0", throttle_ms: 0, ...NO_SAMPLES });
  t.after(() => engine.stop());
  const { subscribes, Recording } = recordingSubscribes();
  const client = new ProgressClient({ url: engine.url, WebSocket: Recording, ...FAST_RECONNECT });
  t.after(() => client.close());
  const retries = [];
  client.on("retry", (r) => retries.push(r));
  // 990 ids of 64 hex digits in ten subscribes: each frame fits; all of them in one (66 KB) would not fit the
  // listener's 64 KiB, which closed the connection at each attempt, and the client came back at once, forever.
  const id = (i) => i.toString(16).padStart(64, "0");
  for (let k = 0; k < 10; k++) await client.subscribe(Array.from({ length: 99 }, (_, i) => id(k * 99 + i)));
  const before = subscribes.length;
  client.reconnect();
  await waitFor(() => client.state === "open" && subscribes.length > before, "the reconnect");
  await client.subscribe("one-more");
  await sleep(300);
  assert.equal(client.state, "open");
  assert.equal(retries.length, 1, JSON.stringify(retries));
  const again = subscribes.slice(before, -1);
  assert.ok(again.length >= 2, `${again.length} frames`);
  assert.equal(new Set(again.flatMap((m) => m.task_ids)).size, 990);
  for (const m of again) assert.ok(JSON.stringify(m).length <= 48100, `a frame of ${JSON.stringify(m).length} bytes`);
});

test("a delta subscription switched off while a full state and a patch are on the wire stays off", LIMIT,
  async (t) => {
    const engine = await startEngine({ listen: "127.0.0.1:0", throttle_ms: 0, ...NO_SAMPLES });
    t.after(() => engine.stop());
    await engine.send("create", { task_id: "x" });
    const { subscribes, Recording } = recordingSubscribes();
    const client = new ProgressClient({ url: engine.url, WebSocket: Recording });
    t.after(() => client.close());
    const log = record(client);
    await client.subscribe("x", { delta: true });
    await waitFor(() => log.last("x") !== undefined, "the first state");
    // The first change after a subscribe goes out in full, the next ones as patches against it: all of them wait
    // unread while the client switches delta off. Before, the full state was not kept as the base (the client no
    // longer wanted delta), the patch after it missed its base, and the client subscribed the task again *with*
    // delta, once for each patch, for as long as the connection lasted.
    const ran = engine.send("run", { task_ids: ["x"], steps: 4, interval: 0.03 });
    busy(250);
    const off = client.subscribe("x", { delta: false });
    await off;
    await ran;
    await waitFor(() => log.last("x")?.data.status === "completed", "the run's end");
    assert.deepEqual(subscribes.map((m) => m.delta), [true, false], JSON.stringify(subscribes));
    assertIncreasing(log.seqs("x"), "x");
    assert.deepEqual(log.resyncs, []);
    assert.equal(client._bases.size, 0, "no base kept once delta is off");
  });

for (const lazyData of [false, true]) {
  test(`finished tasks keep no state in the client (lazyData ${lazyData})`, LIMIT, async (t) => {
    const engine = await startEngine({ listen: "127.0.0.1:0", throttle_ms: 0, ...NO_SAMPLES });
    t.after(() => engine.stop());
    const client = new ProgressClient({ url: engine.url, lazyData });
    t.after(() => client.close());
    const log = record(client);
    await client.subscribe("*", { delta: true });
    const ids = Array.from({ length: 20 }, (_, i) => `f${i}`);
    for (const id of ids) await engine.send("create", { task_id: id });
    await engine.send("run", { task_ids: ids, steps: 3, interval: 0.001 });
    await waitFor(() => ids.every((id) => log.last(id)?.data.status === "completed"), "every task's end");
    // A base (a whole TaskProgress) or a lazily parsed message per finished task was kept for the client's life.
    assert.equal(client._bases.size, 0);
    for (const id of ids) assert.equal(client._tasks.get(id).open, false, id);
  });
}

test("calls made while disconnected: each task goes with its options now, the interval past a refused frame", LIMIT,
  async (t) => {
    const engine = await startEngine({ listen: "127.0.0.1:0", throttle_ms: 0, ...NO_SAMPLES });
    t.after(() => engine.stop());
    for (const id of ["a", "b", "cc"]) await engine.send("create", { task_id: id });
    const { subscribes, Recording } = recordingSubscribes();
    const client = new ProgressClient({ url: engine.url, WebSocket: Recording, ...FAST_RECONNECT });
    t.after(() => client.close());
    const log = record(client);
    await client.subscribe("a");
    client.reconnect(300);
    const bad = "job-" + "x".repeat(300);
    const answers = await Promise.all([
      client.subscribe(["b", "cc"], { delta: true }),
      client.subscribe(["cc"], { delta: false }), // cc's options change before the connection comes
      client.subscribe(bad, { intervalMs: 2000 }), // refused: the interval must not go with it alone
    ].map((p) => p.then(() => "ok", (e) => e.code)));
    assert.deepEqual(answers, ["ok", "ok", "invalid_message"]);
    const sent = subscribes.slice(1);
    for (const m of sent.filter((m) => m.task_ids.includes("cc"))) assert.notEqual(m.delta, true, JSON.stringify(m));
    assert.ok(sent.some((m) => !m.task_ids.includes(bad) && m.interval_ms === 2000), JSON.stringify(sent));
    for (let step = 1; step <= 3; step++) await engine.send("update", { task_id: "cc", step, total: 10 });
    await waitFor(() => log.last("cc")?.data.stages["1"]?.message === "s3", "cc's steps");
    assertIncreasing(log.seqs("cc"), "cc");
    assert.deepEqual(log.resyncs, []);
  });
