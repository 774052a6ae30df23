// Delta subscriptions: the listener sends merge patches, the client applies them, and `update` events carry the
// same whole `data` a plain subscription gets at the same seq (nulls included), across a reconnect too.

import assert from "node:assert/strict";
import { test } from "node:test";

import { ProgressClient, applyMergePatch } from "../progress-client.js";
import { FAST_RECONNECT, NO_SAMPLES, assertIncreasing, record, recordingSubscribes, startEngine, waitFor } from "./support.js";

const LIMIT = { timeout: 30000 };

/** A WebSocket class that counts the frames with a merge patch. */
function counting() {
  const seen = { patches: 0, full: 0 };
  const Counting = class extends WebSocket {
    constructor(url) {
      super(url);
      this.addEventListener("message", (event) => {
        if (typeof event.data !== "string" || !event.data.startsWith('{"type":"progress.update"')) return;
        if (event.data.includes('"base_seq":')) seen.patches += 1;
        else seen.full += 1;
      });
    }
  };
  return { seen, Counting };
}

test("applyMergePatch: RFC 7386", () => {
  assert.deepEqual(applyMergePatch({ a: 1, b: { c: 2, d: null } }, { b: { c: 3 } }), { a: 1, b: { c: 3, d: null } });
  assert.deepEqual(applyMergePatch({ a: 1, b: 2 }, { b: null }), { a: 1 });
  assert.deepEqual(applyMergePatch({ a: [1, 2] }, { a: [null] }), { a: [null] });
  assert.deepEqual(applyMergePatch({ a: 1 }, { a: { b: 1 } }), { a: { b: 1 } });
  const target = { a: { b: 1 } };
  applyMergePatch(target, { a: { b: 2 } });
  assert.deepEqual(target, { a: { b: 1 } }, "the target is not modified");
});

for (const lazyData of [false, true]) {
  test(`delta and plain subscriptions deliver equal states (lazyData ${lazyData}), through a reconnect`, LIMIT,
    async (t) => {
      const engine = await startEngine({ listen: "127.0.0.1:0", throttle_ms: 0, ...NO_SAMPLES });
      t.after(() => engine.stop());
      const ids = ["d1", "d2", "d3"];
      for (const id of ids) await engine.send("create", { task_id: id });
      const plain = new ProgressClient({ url: engine.url, lazyData });
      const { seen, Counting } = counting();
      const delta = new ProgressClient({ url: engine.url, WebSocket: Counting, lazyData, ...FAST_RECONNECT });
      t.after(() => {
        plain.close();
        delta.close();
      });
      const plainLog = record(plain);
      const deltaLog = record(delta);
      await plain.subscribe(ids);
      await delta.subscribe(ids.slice(0, 2), { delta: true });
      await delta.subscribe("*", { delta: true }); // d3 through "*"
      const run = engine.send("run", { task_ids: ids, steps: 60, interval: 0.01 });
      await waitFor(() => deltaLog.updates.length > 40, "some updates");
      delta.reconnect(); // resumes: replayed events and the current state in full, then patches again
      const { final } = await run;
      for (const id of ids) {
        await waitFor(() => plainLog.last(id)?.seq === final[id] && deltaLog.last(id)?.seq === final[id],
          `the final state of ${id}`);
      }
      const bySeq = new Map(plainLog.updates.map((m) => [`${m.task_id}@${m.seq}`, m.data]));
      let compared = 0;
      for (const m of deltaLog.updates) {
        if (m.replayed) continue; // a replayed event is the task as of that event, not a live state
        const full = bySeq.get(`${m.task_id}@${m.seq}`);
        if (full === undefined) continue;
        assert.deepEqual(m.data, full, `${m.task_id} at seq ${m.seq}`);
        assert.equal("patch" in m, false);
        compared += 1;
      }
      for (const id of ids) assertIncreasing(deltaLog.seqs(id), id);
      assert.ok(compared > 100, `only ${compared} states compared`);
      assert.ok(seen.patches > seen.full, `${seen.patches} patches, ${seen.full} full states`);
      assert.equal(deltaLog.last("d1").data.status, "completed");
      assert.equal(deltaLog.last("d1").data.error, null); // a null kept as a key
      assert.deepEqual(deltaLog.errors, []);
    });
}

test("unsubscribing a delta task that a plain \"*\" still covers: the patches in flight apply, nothing is asked again",
  LIMIT, async (t) => {
    const engine = await startEngine({ listen: "127.0.0.1:0", throttle_ms: 0, ...NO_SAMPLES });
    t.after(() => engine.stop());
    await engine.send("create", { task_id: "u" });
    const { subscribes, Recording } = recordingSubscribes();
    const client = new ProgressClient({ url: engine.url, WebSocket: Recording });
    t.after(() => client.close());
    const log = record(client);
    await client.subscribe("*");
    await client.subscribe("u", { delta: true });
    for (let step = 1; step <= 3; step++) {
      await engine.send("update", { task_id: "u", step, total: 10 });
      await waitFor(() => log.last("u")?.data.stages["1"]?.message === `s${step}`, `step ${step}`);
    }
    // A patch on its way while the client unsubscribes: it arrives while this thread is busy, and is read after.
    const stepped = engine.send("update", { task_id: "u", step: 4, total: 10 });
    const until = Date.now() + 100;
    while (Date.now() < until); // the engine steps and the patch waits in the socket, unread by this busy thread
    const unsubscribed = client.unsubscribe("u");
    await stepped;
    await unsubscribed;
    await engine.send("update", { task_id: "u", step: 5, total: 10 }); // a full state now ("*" is plain)
    await waitFor(() => log.last("u")?.data.stages["1"]?.message === "s5", "step 5");
    assert.deepEqual(log.updates.filter((m) => m.task_id === "u").map((m) => m.data.stages["1"].message).slice(-5),
      ["s1", "s2", "s3", "s4", "s5"].slice(-5));
    assert.equal(subscribes.length, 2, JSON.stringify(subscribes));
    assertIncreasing(log.seqs("u"), "u");
    assert.deepEqual(log.errors, []);
  });
