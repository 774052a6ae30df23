// cancel(): the request over the WebSocket, on one engine and across a fleet (a runner on Redis, progress-server
// taking the request), and each refusal.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { ProgressClient, ProgressError } from "../progress-client.js";
import { NO_SAMPLES, REDIS, SERVER, record, startEngine, startRedis, startServer, waitFor, which } from "./support.js";

let engine;
const clients = [];
before(async () => {
  engine = await startEngine({ listen: "127.0.0.1:0", throttle_ms: 20, ...NO_SAMPLES });
});
after(async () => {
  for (const c of clients) c.close();
  await engine.stop();
});

function client(url = engine.url) {
  const c = new ProgressClient({ url });
  clients.push(c);
  return c;
}

async function refusal(promise) {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof ProgressError, String(error));
    return error.code;
  }
  assert.fail("the request was not refused");
}

test("a request reaches the runner, shows on the task, and ends when the runner cancels", async () => {
  await engine.send("create", { task_id: "stop-me" });
  await engine.send("update", { task_id: "stop-me", step: 3, total: 30 });
  const c = client();
  const log = record(c);
  await c.subscribe("stop-me");
  await waitFor(() => log.last("stop-me")?.data.status === "executing", "the executing state");
  assert.equal(log.last("stop-me").data.cancel_requested, false);
  assert.equal((await engine.send("cancel_requested", { task_id: "stop-me" })).requested, false);

  assert.equal(await c.cancel("stop-me", { reason: "wrong prompt" }), undefined);
  await waitFor(() => log.last("stop-me").data.cancel_requested === true, "cancel_requested in an update");
  const requested = log.last("stop-me").data;
  assert.equal(requested.cancel_reason, "wrong prompt");
  assert.equal(requested.status, "executing"); // the engine never stops a runner itself
  assert.equal((await engine.send("cancel_requested", { task_id: "stop-me" })).requested, true);
  // Asking again while one stands changes nothing: the first reason is kept.
  await c.cancel("stop-me", { reason: "another" });
  assert.equal((await c.getProgress("stop-me")).cancel_reason, "wrong prompt");

  await engine.send("cancel", { task_id: "stop-me", reason: "wrong prompt" });
  await waitFor(() => log.last("stop-me").data.status === "cancelled", "the cancelled state");
  assert.equal(log.last("stop-me").data.cancel_requested, false);
  assert.equal(log.last("stop-me").data.cancel_reason, null);
  assert.deepEqual(log.errors, []);
});

test("refusals: unknown task, finished task, bad reason", async () => {
  await engine.send("create", { task_id: "done-already" });
  await engine.send("complete", { task_id: "done-already" });
  const c = client();
  const log = record(c);
  assert.equal(await refusal(c.cancel("no-such-task")), "not_found");
  assert.equal(await refusal(c.cancel("done-already")), "conflict");
  await engine.send("create", { task_id: "long-reason" });
  assert.equal(await refusal(c.cancel("long-reason", { reason: "x".repeat(1025) })), "invalid_message");
  assert.equal((await engine.send("cancel_requested", { task_id: "long-reason" })).requested, false);
  // A refused request rejects its own promise; nothing else is reported.
  assert.deepEqual(log.errors, []);
});

const MISSING = `needs ${REDIS} (apt-get install redis-server) and ${SERVER} (make build)`;
test("in a fleet: progress-server takes the request, the runner's engine reads it from Redis",
  { skip: which(REDIS) && which(SERVER) ? false : MISSING, timeout: 30000 }, async (t) => {
    const redis = await startRedis();
    t.after(() => redis.stop());
    const server = await startServer("127.0.0.1:0", "--redis-url", redis.url);
    t.after(() => server.kill());
    const runner = await startEngine({ redis_url: redis.url, throttle_ms: 20, ...NO_SAMPLES });
    t.after(() => runner.stop());
    await runner.send("create", { task_id: "fleet-job" });
    await runner.send("update", { task_id: "fleet-job", step: 1, total: 10 });

    const c = client(server.url);
    const log = record(c);
    await c.subscribe("fleet-job");
    await waitFor(() => log.last("fleet-job")?.data.status === "executing", "the runner's state on the server");
    await c.cancel("fleet-job", { reason: "from the fleet" });
    await waitFor(async () => (await runner.send("cancel_requested", { task_id: "fleet-job" })).requested,
      "the request in the runner's process");
    await waitFor(() => log.last("fleet-job").data.cancel_requested === true, "cancel_requested on the server");
    await runner.send("cancel", { task_id: "fleet-job", reason: "from the fleet" });
    await waitFor(() => log.last("fleet-job").data.status === "cancelled", "the cancelled state on the server");
    assert.equal(await refusal(c.cancel("fleet-job")), "conflict");
  });
