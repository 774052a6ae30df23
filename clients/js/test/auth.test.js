// A listener with auth_token: the right token is let in, a wrong or missing one is refused (close 4401) and
// the client says so once and stops instead of reconnecting.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { ProgressClient } from "../progress-client.js";
import { record, sleep, startEngine, waitFor } from "./support.js";

const TOKEN = "s3cret/token";
let engine;
before(async () => {
  engine = await startEngine({ listen: "127.0.0.1:0", auth_token: TOKEN });
  await engine.send("create", { task_id: "guarded" });
});
after(() => engine.stop());

test("the right token: subscribed and updated", async () => {
  const c = new ProgressClient({ url: engine.url, token: TOKEN });
  try {
    const log = record(c);
    await c.subscribe("guarded");
    await waitFor(() => log.last("guarded"), "the current state");
    assert.equal(log.last("guarded").data.task_id, "guarded");
    assert.equal((await c.getProgress("guarded")).task_id, "guarded");
  } finally {
    c.close();
  }
});

for (const [what, token] of [["a wrong token", "not-it"], ["no token", undefined]]) {
  test(`${what}: refused with an error event, no reconnect`, async () => {
    const c = new ProgressClient({ url: engine.url, token, minReconnectDelay: 10 });
    const log = record(c);
    const subscribed = c.subscribe("guarded");
    await assert.rejects(subscribed, (e) => e.code === "unauthorized" && e.closeCode === 4401);
    assert.equal(c.state, "closed");
    assert.equal(log.errors.length, 1);
    assert.equal(log.errors[0].code, "unauthorized");
    assert.match(log.errors[0].message, /unauthorized/);
    await sleep(100); // ten times the reconnect delay: nothing more happens
    assert.deepEqual(log.states, ["closed"]);
    assert.equal(log.errors.length, 1);
    assert.deepEqual(log.updates, []);
  });
}
