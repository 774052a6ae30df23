// What the client's tests share: real engines (test/engine.py over the Python binding), progress-server and
// redis-server on free loopback ports, bounded waits. Every process started here is killed when the test
// process exits. Paths come from the environment (tests/clients/test_js_client.py sets them), else defaults
// that work from a checkout after `make build`.

import { spawn } from "node:child_process";
import { accessSync, constants, mkdtempSync } from "node:fs";
import { createServer, Socket } from "node:net";
import { tmpdir } from "node:os";
import { delimiter, dirname, join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

const HERE = dirname(fileURLToPath(import.meta.url));
const ROOT = resolve(HERE, "..", "..", "..");
export const PYTHON = process.env.PROGRESS_PYTHON || "python3";
export const SERVER = process.env.PROGRESS_SERVER || join(ROOT, ".build", "release", "progress-server");
export const REDIS = process.env.PROGRESS_REDIS_SERVER || "redis-server";
export const CHROMIUM = process.env.PROGRESS_CHROMIUM || "/usr/bin/chromium";

/** Client options for tests that reconnect: no need to wait as long as in production. */
export const FAST_RECONNECT = { minReconnectDelay: 50, maxReconnectDelay: 200 };

/** Engine config without resource samples, whose events would move the seqs a test compares. */
export const NO_SAMPLES = { resource_interval_ms: 3600000 };

const children = new Set();
process.on("exit", () => {
  for (const child of children) child.kill("SIGKILL");
});

function track(child) {
  children.add(child);
  child.on("exit", () => children.delete(child));
  return child;
}

/** The program's path if it is an executable file (a bare name is looked up in PATH), else null. */
export function which(program) {
  const candidates = program.includes("/") ? [program]
    : (process.env.PATH || "").split(delimiter).map((dir) => join(dir, program));
  for (const path of candidates) {
    try {
      accessSync(path, constants.X_OK);
      return path;
    } catch {
      // not there: the next one
    }
  }
  return null;
}

export async function freePort() {
  const server = createServer();
  await new Promise((ok) => server.listen(0, "127.0.0.1", ok));
  const { port } = server.address();
  await new Promise((ok) => server.close(ok));
  return port;
}

/** Polls `check` every 10 ms until it returns something truthy (returned), failing after `timeout` ms. */
export async function waitFor(check, what, timeout = 10000) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${what}`);
    await sleep(10);
  }
}

export const sleep = (ms) => new Promise((ok) => setTimeout(ok, ms));

/**
 * An engine process (test/engine.py) opened with `config`: `engine.port`, `engine.url`,
 * `await engine.send(op, fields)` for its commands, `engine.kill()` (SIGKILL), `await engine.stop()`.
 */
export async function startEngine(config) {
  const child = track(spawn(PYTHON, [join(HERE, "engine.py"), JSON.stringify(config)],
    { stdio: ["pipe", "pipe", "pipe"] }));
  let stderr = "";
  child.stderr.on("data", (chunk) => (stderr += chunk));
  const pending = new Map();
  let nextId = 1;
  let onPort;
  const ready = new Promise((ok, fail) => {
    onPort = ok;
    child.on("exit", (code, signal) => {
      fail(new Error(`engine.py exited (${code ?? signal}) before listening:\n${stderr}`));
    });
  });
  createInterface({ input: child.stdout }).on("line", (line) => {
    const reply = JSON.parse(line);
    if ("port" in reply) return onPort(reply.port);
    const request = pending.get(reply.id);
    pending.delete(reply.id);
    if (reply.error) request.fail(new Error(reply.error));
    else request.ok(reply);
  });
  child.on("exit", () => {
    for (const request of pending.values()) request.fail(new Error(`engine.py ended:\n${stderr}`));
    pending.clear();
  });
  const port = await ready;
  return {
    port,
    url: `http://127.0.0.1:${port}`,
    send(op, fields = {}) {
      const id = nextId++;
      return new Promise((ok, fail) => {
        pending.set(id, { ok, fail });
        child.stdin.write(JSON.stringify({ id, op, ...fields }) + "\n");
      });
    },
    kill() {
      return killed(child);
    },
    async stop() {
      child.stdin.end();
      await exited(child);
    },
  };
}

/** redis-server on a free loopback port, without persistence: `redis.url`, `await redis.stop()`. */
export async function startRedis() {
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), "progress-client-redis-"));
  const child = track(spawn(REDIS, ["--port", String(port), "--bind", "127.0.0.1", "--save", "",
    "--appendonly", "no", "--dir", dir], { stdio: "ignore" }));
  await waitFor(() => canConnect(port), `redis-server on port ${port}`);
  return { url: `redis://127.0.0.1:${port}/0`, stop: () => killed(child) };
}

/** progress-server listening on `listen` (127.0.0.1:0: a free port): `server.port`, `server.url`, `server.kill()`. */
export async function startServer(listen, ...args) {
  const deadline = Date.now() + 5000;
  for (;;) {
    const child = track(spawn(SERVER, ["--listen", listen, ...args], { stdio: ["ignore", "ignore", "pipe"] }));
    const lines = createInterface({ input: child.stderr }); // read to the end, so its log never blocks it
    const port = await new Promise((ok, fail) => {
      child.on("exit", (code, signal) => {
        fail(new Error(`progress-server exited (${code ?? signal}) before listening`));
      });
      lines.on("line", (line) => {
        const entry = line.startsWith("{") ? JSON.parse(line) : {};
        if (entry.event === "listening") ok(entry.port);
      });
    }).catch((error) => (Date.now() < deadline ? -1 : Promise.reject(error)));
    if (port > 0) return { port, url: `http://127.0.0.1:${port}`, kill: () => killed(child) };
    // A restarted listener reopens the port of one just killed: the kernel may need a moment.
    await killed(child);
    if (Date.now() > deadline) throw new Error(`progress-server could not listen on ${listen}`);
    await sleep(50);
  }
}

function canConnect(port) {
  return new Promise((ok) => {
    const socket = new Socket();
    socket.once("error", () => ok(false));
    socket.connect(port, "127.0.0.1", () => {
      socket.destroy();
      ok(true);
    });
  });
}

/** Kills with SIGKILL and waits for the exit. */
function killed(child) {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  child.kill("SIGKILL");
  return exited(child);
}

function exited(child) {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((ok) => child.once("exit", ok));
}

/** Asserts that each seq is larger than the one before. */
export function assertIncreasing(seqs, what) {
  for (let i = 1; i < seqs.length; i++) {
    if (!(seqs[i] > seqs[i - 1])) throw new Error(`${what}: seq ${seqs[i]} after ${seqs[i - 1]} in ${seqs}`);
  }
}

/** Records a client's events in order: `log.updates`, `log.states`, `log.errors`, `log.resyncs`, `log.logs`. */
export function record(client) {
  const log = { updates: [], states: [], errors: [], resyncs: [], logs: [] };
  client.on("update", (m) => log.updates.push(m));
  client.on("state", (s) => log.states.push(s));
  client.on("error", (e) => log.errors.push(e));
  client.on("resync", (e) => log.resyncs.push(e));
  client.on("log", (m) => log.logs.push(m));
  log.seqs = (task) => log.updates.filter((m) => m.task_id === task).map((m) => m.seq);
  log.last = (task) => log.updates.filter((m) => m.task_id === task).at(-1);
  return log;
}

/** A WebSocket class that records the `subscribe` messages a client sends (`subscribes`, in order). */
export function recordingSubscribes() {
  const subscribes = [];
  const Recording = class extends WebSocket {
    send(data) {
      const message = JSON.parse(data);
      if (message.type === "subscribe") subscribes.push(message);
      super.send(data);
    }
  };
  return { subscribes, Recording };
}

/** A WebSocket class that keeps every socket it opens (`sockets`, in order): how many connections a client made. */
export function countingSockets() {
  const sockets = [];
  const Counted = class extends WebSocket {
    constructor(url) {
      super(url);
      sockets.push(this);
    }
  };
  return { sockets, Counted };
}
