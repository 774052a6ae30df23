// lazyData: updates delivered without being parsed, `data` read on demand; the same updates as a parsing client's.

import assert from "node:assert/strict";
import { test } from "node:test";

import { ProgressClient } from "../progress-client.js";
import { FAST_RECONNECT, NO_SAMPLES, assertIncreasing, record, startEngine, waitFor } from "./support.js";

const LIMIT = { timeout: 30000 };
/** An id that JSON escapes: the client reads it from the message's head. */
const ODD = 'a "quoted" \\ id/é';

test("lazyData: the same updates as parsed ones; data parsed on first read, then kept", LIMIT, async (t) => {
  const engine = await startEngine({ listen: "127.0.0.1:0", throttle_ms: 20, ...NO_SAMPLES });
  t.after(() => engine.stop());
  const ids = ["plain", ODD];
  for (const id of ids) await engine.send("create", { task_id: id });
  const eager = new ProgressClient({ url: engine.url });
  const lazy = new ProgressClient({ url: engine.url, lazyData: true });
  t.after(() => {
    eager.close();
    lazy.close();
  });
  const eagerLog = record(eager);
  const lazyLog = record(lazy);
  await Promise.all([eager.subscribe("*"), lazy.subscribe("*")]);
  await waitFor(() => ids.every((id) => eagerLog.last(id) && lazyLog.last(id)), "the states");
  const { final } = await engine.send("run", { task_ids: ids, steps: 30, interval: 0.005 });
  await waitFor(() => ids.every((id) => eagerLog.last(id).seq === final[id] && lazyLog.last(id).seq === final[id]),
    "the final states");

  for (const id of ids) {
    assertIncreasing(lazyLog.seqs(id), id);
    // Both clients are sent the same frames (the listener coalesces per client, so their counts may differ):
    // each update the lazy one delivered is a state of the task that its data agrees with.
    for (const m of lazyLog.updates.filter((u) => u.task_id === id)) {
      assert.equal(Object.getOwnPropertyDescriptor(m, "data"), undefined, "data parsed on arrival");
      assert.equal(m.type, "progress.update");
      assert.equal(m.data.task_id, id);
      assert.equal(m.data.seq, m.seq);
      assert.equal(m.data, m.data, "parsed again");
    }
    const lastLazy = lazyLog.last(id);
    assert.deepEqual(JSON.parse(JSON.stringify(lastLazy)), JSON.parse(JSON.stringify(eagerLog.last(id))));
    assert.equal(lastLazy.data.status, "completed");
  }
  assert.deepEqual(lazyLog.resyncs, []);
  assert.deepEqual(lazyLog.errors, []);
});

test("lazyData: a finished task never read is left out of the resume map; replays come parsed", LIMIT, async (t) => {
  const engine = await startEngine({ listen: "127.0.0.1:0", throttle_ms: 20, ...NO_SAMPLES });
  t.after(() => engine.stop());
  await engine.send("create", { task_id: "open-one" });
  await engine.send("update", { task_id: "open-one", step: 1, total: 10 });
  await engine.send("create", { task_id: "done-one" });
  await engine.send("complete", { task_id: "done-one" });
  const sent = [];
  const Sending = class extends WebSocket {
    send(text) {
      sent.push(JSON.parse(text));
      super.send(text);
    }
  };
  const c = new ProgressClient({ url: engine.url, lazyData: true, WebSocket: Sending, ...FAST_RECONNECT });
  t.after(() => c.close());
  const log = record(c);
  const resumed = [];
  c.on("resumed", (e) => resumed.push(e));
  await c.subscribe("*");
  await waitFor(() => log.last("open-one") && log.last("done-one"), "both states");

  c.reconnect(60000); // away until the changes are made, then back at once
  for (const step of [2, 3, 4]) await engine.send("update", { task_id: "open-one", step, total: 10 });
  c.reconnect();
  await waitFor(() => resumed.length === 1, "the resumed event");
  const resubscribe = sent.filter((m) => m.type === "subscribe").at(-1);
  assert.deepEqual(Object.keys(resubscribe.resume), ["open-one"]);
  const replayed = log.updates.filter((m) => m.replayed);
  assert.ok(replayed.length >= 2, `${replayed.length} replayed`);
  assert.ok(replayed.every((m) => Object.hasOwn(m, "data") && m.data.seq === m.seq));
  assert.deepEqual(resumed[0], { tasks: 2, replayed: replayed.length, gone: [] });
  assert.equal(log.seqs("done-one").length, 1, "the finished task delivered twice");
  assertIncreasing(log.seqs("open-one"), "open-one");
  assert.deepEqual(log.resyncs, []);
});
