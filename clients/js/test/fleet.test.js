// A fleet's listener goes away in the middle of a task: a runner writes to Redis, progress-server listens, and
// is SIGKILLed and started again on the same port. The client reconnects, resubscribes and resumes each task
// from its last seq: nothing is lost, nothing delivered twice.

import assert from "node:assert/strict";
import { test } from "node:test";

import { ProgressClient } from "../progress-client.js";
import {
  FAST_RECONNECT, REDIS, SERVER, assertIncreasing, record, sleep, startEngine, startRedis, startServer, waitFor, which,
} from "./support.js";

/** A WebSocket that also keeps every message the listener sent, to compare with what the client delivered. */
function spying(into) {
  return class extends WebSocket {
    constructor(url) {
      super(url);
      this.addEventListener("message", (event) => into.push(JSON.parse(event.data)));
    }
  };
}

const MISSING = `needs ${REDIS} (apt-get install redis-server) and ${SERVER} (make build)`;
const OPTIONS = { skip: which(REDIS) && which(SERVER) ? false : MISSING, timeout: 30000 };

test("progress-server killed mid-task and restarted: no gap, no duplicate", OPTIONS, async (t) => {
  const redis = await startRedis();
  t.after(() => redis.stop());
  let server = await startServer("127.0.0.1:0", "--redis-url", redis.url);
  const runner = await startEngine({ redis_url: redis.url, throttle_ms: 20 });
  t.after(() => runner.stop());
  const tasks = ["job-0", "job-1"];
  for (const id of tasks) await runner.send("create", { task_id: id });

  const sent = [];
  const c = new ProgressClient({ url: server.url, WebSocket: spying(sent), ...FAST_RECONNECT });
  t.after(() => c.close());
  const log = record(c);
  await c.subscribe(tasks);
  const run = runner.send("run", { task_ids: tasks, steps: 250, interval: 0.01 });
  await waitFor(() => tasks.every((id) => log.last(id)?.seq > 30), "30 updates of each task");

  await server.kill();
  await waitFor(() => c.state === "connecting", "the client to see the listener gone");
  const lastBefore = Object.fromEntries(tasks.map((id) => [id, log.last(id).seq]));
  const before = log.updates.length;
  await sleep(500); // the runner goes on meanwhile, through Redis only
  server = await startServer(`127.0.0.1:${server.port}`, "--redis-url", redis.url);
  const { final } = await run;
  await waitFor(() => tasks.every((id) => log.last(id).seq === final[id]), "the final states", 15000);

  for (const id of tasks) {
    assertIncreasing(log.seqs(id), id);
    const resumed = log.updates.slice(before).filter((m) => m.task_id === id);
    // Replayed from the Redis stream: every missed event, from the one after the last delivered.
    const replayed = resumed.filter((m) => m.replayed).map((m) => m.seq);
    assert.ok(replayed.length > 0, `${id}: nothing missed in 500 ms?`);
    assert.deepEqual(replayed, replayed.map((_, i) => lastBefore[id] + 1 + i), `${id}: replayed with a gap`);
    assert.equal(resumed[0].seq, lastBefore[id] + 1);
    assert.equal(log.last(id).data.status, "completed");
    assert.ok(sent.some((m) => m.task_id === id && m.recovered === true), `${id}: the listener said recovered`);
  }
  assert.deepEqual(log.states, ["open", "connecting", "open"]);
  assert.deepEqual(log.resyncs, []);
  assert.deepEqual(log.errors, []);

  // Once more with the tasks finished: the listener sends their states again, which the client drops.
  const delivered = log.updates.length;
  const sentBefore = sent.length;
  await server.kill();
  await waitFor(() => c.state === "connecting", "the client to see the listener gone again");
  server = await startServer(`127.0.0.1:${server.port}`, "--redis-url", redis.url);
  t.after(() => server.kill());
  await waitFor(() => tasks.every((id) => sent.slice(sentBefore).some((m) => m.task_id === id)), "the states again");
  await sleep(100);
  assert.equal(log.updates.length, delivered, "a state delivered twice");
  assert.deepEqual(log.resyncs, []);
});
