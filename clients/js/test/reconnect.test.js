// What a page shows of a connection's life: reconnect() (a drop asked for), the `retry` event of each attempt, and
// the `resumed` event once the listener has sent what a resubscribe brought, with the tasks it no longer has.

import assert from "node:assert/strict";
import { test } from "node:test";

import { ProgressClient } from "../progress-client.js";
import { FAST_RECONNECT, NO_SAMPLES, assertIncreasing, countingSockets, freePort, record, recordingSubscribes, sleep,
  startEngine, waitFor } from "./support.js";

const LIMIT = { timeout: 30000 };

/** A WebSocket class that keeps every message the client sent (parsed). */
function sending(into) {
  return class extends WebSocket {
    send(text) {
      into.push(JSON.parse(text));
      super.send(text);
    }
  };
}

function events(client, name) {
  const seen = [];
  client.on(name, (e) => seen.push(e));
  return seen;
}

test("reconnect(): away until asked back, the missed events replayed and counted in `resumed`", LIMIT, async (t) => {
  const engine = await startEngine({ listen: "127.0.0.1:0", throttle_ms: 20, ...NO_SAMPLES });
  t.after(() => engine.stop());
  await engine.send("create", { task_id: "moving" });
  await engine.send("update", { task_id: "moving", step: 1, total: 10 });
  await engine.send("create", { task_id: "still" });
  const c = new ProgressClient({ url: engine.url, ...FAST_RECONNECT });
  t.after(() => c.close());
  const log = record(c);
  const resumed = events(c, "resumed");
  const retries = events(c, "retry");
  await c.subscribe("*");
  await waitFor(() => log.last("moving") && log.last("still"), "both states");
  assert.deepEqual(resumed, [], "no resumed event on the first connection");

  // Away for a minute, so that the changes below are certainly missed however slow the machine; then back at once.
  c.reconnect(60000);
  assert.equal(c.state, "connecting");
  for (const step of [2, 3, 4]) await engine.send("update", { task_id: "moving", step, total: 10 });
  const { task } = await engine.send("get", { task_id: "moving" });
  assert.equal(c.state, "connecting");
  c.reconnect();
  assert.deepEqual(retries, [{ attempt: 1, delay: 60000, code: 4000, reason: "reconnect asked" },
    { attempt: 2, delay: 0, code: undefined, reason: "reconnect asked" }]);
  await waitFor(() => resumed.length === 1, "the resumed event");

  const replayed = log.updates.filter((m) => m.replayed);
  assert.ok(replayed.length >= 2, `${replayed.length} replayed`); // the events of steps 2 and 3, at least
  assert.deepEqual(resumed[0], { tasks: 2, replayed: replayed.length, gone: [] });
  assert.equal(log.last("moving").seq, task.seq, "the current state came before `resumed`");
  assertIncreasing(log.seqs("moving"), "moving");
  assert.equal(log.seqs("still").length, 1, "an unchanged task delivered twice");
  assert.deepEqual(log.states, ["open", "connecting", "open"]);
  assert.deepEqual(log.resyncs, []);
  assert.deepEqual(log.errors, []);
});

test("a listener restarted without some tasks: `retry` per attempt, those tasks `gone`, one coming back", LIMIT,
  async (t) => {
    const port = await freePort();
    let engine = await startEngine({ listen: `127.0.0.1:${port}`, ...NO_SAMPLES });
    await engine.send("create", { task_id: "stays" });
    await engine.send("create", { task_id: "vanishes" });
    await engine.send("update", { task_id: "vanishes", step: 3, total: 10 });
    await engine.send("create", { task_id: "finished" });
    await engine.send("complete", { task_id: "finished" });
    const sent = [];
    const c = new ProgressClient({ url: `http://127.0.0.1:${port}`, WebSocket: sending(sent), minReconnectDelay: 50,
      maxReconnectDelay: 200 });
    t.after(() => c.close());
    const log = record(c);
    const resumed = events(c, "resumed");
    const retries = events(c, "retry");
    await c.subscribe("*");
    await waitFor(() => ["stays", "vanishes", "finished"].every((id) => log.last(id)), "the three states");
    const vanished = log.last("vanishes").seq;

    await engine.kill();
    await waitFor(() => retries.length >= 4, "four attempts");
    const attempts = retries.slice(0, 4);
    assert.deepEqual(attempts.map((r) => r.attempt), [1, 2, 3, 4]);
    attempts.forEach((r, i) => {
      const base = Math.min(200, 50 * 2 ** i);
      assert.ok(r.delay >= base / 2 && r.delay <= base, `attempt ${r.attempt}: ${r.delay} ms`);
      assert.equal(typeof r.code, "number");
    });
    assert.deepEqual(log.states, ["open", "connecting"], "one state change for all the attempts");

    engine = await startEngine({ listen: `127.0.0.1:${port}`, ...NO_SAMPLES });
    t.after(() => engine.stop());
    await engine.send("create", { task_id: "stays" });
    await waitFor(() => resumed.length === 1, "the resumed event");
    assert.deepEqual({ ...resumed[0], gone: resumed[0].gone.sort() },
      { tasks: 1, replayed: 0, gone: ["finished", "vanishes"] });
    assert.deepEqual(log.states, ["open", "connecting", "open"]);

    // Gone tasks are resumed no more, and not reported again.
    const subscribes = sent.filter((m) => m.type === "subscribe").length;
    c.reconnect();
    await waitFor(() => resumed.length === 2, "the second resumed event");
    const resubscribe = sent.filter((m) => m.type === "subscribe")[subscribes];
    assert.deepEqual(Object.keys(resubscribe.resume ?? {}), ["stays"]);
    assert.deepEqual(resumed[1], { tasks: 1, replayed: 0, gone: [] });

    // Made again under its id: delivered, with a resync (a lower seq than the last one delivered).
    await engine.send("create", { task_id: "vanishes" });
    await waitFor(() => log.last("vanishes").seq !== vanished, "the task back");
    assert.ok(log.last("vanishes").seq < vanished);
    assert.deepEqual(log.resyncs.filter((r) => r.task_id === "vanishes").map((r) => r.last_seq), [vanished]);
    assert.deepEqual(log.errors, []);
  });

test("a listener that stops answering is given up after two silent pings; one that answers is kept", async () => {
  /** A socket that opens at once and answers pings only when `answers`. */
  const socket = (answers, into) => class {
    constructor() {
      into.push(this);
      this.sent = [];
      setTimeout(() => this.onmessage({ data: JSON.stringify({ type: "connection.established", client_id: "x" }) }));
    }

    send(text) {
      this.sent.push(JSON.parse(text).type);
      if (answers) setTimeout(() => this.onmessage({ data: JSON.stringify({ type: "pong" }) }));
    }

    close(code, reason) {
      this.closed = { code, reason };
    }
  };
  const silent = [];
  const answering = [];
  const options = { url: "ws://h:1", pingInterval: 50, minReconnectDelay: 60000 };
  const dead = new ProgressClient({ ...options, WebSocket: socket(false, silent) });
  const alive = new ProgressClient({ ...options, WebSocket: socket(true, answering) });
  try {
    const retries = events(dead, "retry");
    await waitFor(() => dead.state === "open", "the silent one open");
    const opened = Date.now();
    await waitFor(() => retries.length === 1, "the silent one given up", 2000);
    // Two intervals of silence (100 ms), not one; `opened` is read up to a poll (10 ms) late.
    assert.ok(Date.now() - opened >= 85, `given up after ${Date.now() - opened} ms`);
    assert.equal(retries[0].code, 1006);
    assert.equal(retries[0].reason, "no answer from the listener");
    assert.deepEqual(silent[0].closed, { code: 4000, reason: "no answer from the listener" });
    // Four pings: twice as long as the silent one lasted.
    await waitFor(() => answering[0].sent.filter((type) => type === "ping").length >= 4, "four pings answered", 2000);
    assert.equal(alive.state, "open");
    assert.equal(answering.length, 1);
    assert.equal(answering[0].closed, undefined);
  } finally {
    dead.close();
    alive.close();
  }
});

test("after a reconnect the connection's interval is the one the last subscribe() gave", LIMIT, async (t) => {
  const engine = await startEngine({ listen: "127.0.0.1:0", ...NO_SAMPLES });
  t.after(() => engine.stop());
  await engine.send("create", { task_id: "paced" });
  const { subscribes, Recording } = recordingSubscribes();
  const c = new ProgressClient({ url: engine.url, WebSocket: Recording, ...FAST_RECONNECT });
  t.after(() => c.close());
  const resumed = events(c, "resumed");
  await c.subscribe("paced", { intervalMs: 1000 });
  await c.subscribe("*", { intervalMs: 250 });
  await c.subscribe("paced", { intervalMs: 1000, delta: true }); // the latest: 1000
  subscribes.length = 0;
  c.reconnect();
  await waitFor(() => resumed.length === 1, "the resumed event");
  // Every frame carries the connection's interval (so that one the listener refuses does not leave it unset).
  assert.ok(subscribes.length > 0 && subscribes.every((m) => m.interval_ms === 1000), JSON.stringify(subscribes));
});

test("close() or reconnect() from a `state` handler on a lost connection is what happens next", LIMIT, async (t) => {
  const engine = await startEngine({ listen: "127.0.0.1:0", ...NO_SAMPLES });
  t.after(() => engine.stop());
  for (const asked of ["close", "reconnect"]) {
    const { sockets, Counted } = countingSockets();
    const c = new ProgressClient({ url: engine.url, WebSocket: Counted, ...FAST_RECONNECT });
    t.after(() => c.close());
    const states = [];
    let once = true;
    c.on("state", (state) => {
      states.push(state);
      if (state === "connecting" && once) {
        once = false;
        if (asked === "close") c.close();
        else c.reconnect(0);
      }
    });
    await c.subscribe("*");
    c.reconnect(); // drops the connection as a lost one: the handler above runs
    if (asked === "close") {
      await sleep(400); // past the FAST_RECONNECT back-off: no attempt may follow
      assert.equal(c.state, "closed");
      assert.equal(sockets.length, 1, "a closed client connected again");
    } else {
      await waitFor(() => c.state === "open", "the client back");
      await sleep(400);
      assert.equal(sockets.length, 2, "one attempt, not two");
      assert.deepEqual(sockets.map((s) => s.readyState), [WebSocket.CLOSED, WebSocket.OPEN]);
    }
  }
});
