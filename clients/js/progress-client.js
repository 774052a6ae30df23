// The WebSocket client of ProgressEngine's listener (README.md beside this file; the protocol: SPEC §7).
// One file, no dependencies: the same module runs in browsers and in Node (22, or 20 with
// --experimental-websocket), which both have a standard WebSocket.

const WS_PATH = "/api/v1/progress/ws";
const TERMINAL = new Set(["completed", "failed", "cancelled"]);
/** Close codes of a refusal that reconnecting cannot change: the listener's configuration refused this client. */
const REFUSED = {
  4401: "unauthorized",
  4403: "origin_not_allowed",
  4404: "no_websocket_endpoint",
  1008: "invalid_client_id",
};
/** Close code of a frame over the listener's max_message_bytes. */
const TOO_LARGE = 1009;
/** UTF-8 bytes of a subscribe frame, ids and resume map: the listener caps frames at 64 KiB by default. */
const RESUME_BUDGET = 48000;
/** The least a subscribe frame is cut to after the listener refused larger ones (a max_message_bytes below
 *  RESUME_BUDGET): below this the client gives up, as no retry can subscribe it. */
const MIN_FRAME_BUDGET = 1024;
/** Finished tasks whose last seq the client keeps, to drop their state when a reconnect's subscribe sends it again;
 *  past this many, the least recently updated half is forgotten (such a task's state, sent again, is delivered once
 *  more). A page on "*" sees every task of a fleet go by: without a bound it would keep them all. */
const FINISHED_KEPT = 5000;
/** Replies of the listener, one per request, in the order of the requests (SPEC §7). */
const REPLIES = new Set([
  "subscribed", "unsubscribed", "progress.current", "batch.progress", "cancel.accepted", "pong", "error",
]);
/** How the listener begins a `progress.update` (Listener/Messages.swift writes type, task_id, seq, flags, data). */
const UPDATE_HEAD = '{"type":"progress.update","task_id":"';

/** An error the listener answered, or a refusal of the connection (`closeCode` set), or `close()` (code "closed"). */
export class ProgressError extends Error {
  constructor(code, message, closeCode) {
    super(message);
    this.name = "ProgressError";
    this.code = code;
    if (closeCode !== undefined) this.closeCode = closeCode;
  }
}

export class ProgressClient {
  /**
   * Connects at once and keeps connecting until `close()`: see README.md for the options and the events.
   */
  constructor(options = {}) {
    this._url = webSocketURL(options.url ?? globalThis.location?.origin, options.token, options.clientId);
    this._WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (typeof this._WebSocket !== "function") {
      throw new TypeError("no WebSocket in this runtime: use Node 22+, Node 20 with --experimental-websocket, " +
        "or pass a WebSocket class as {WebSocket}");
    }
    this._minDelay = options.minReconnectDelay ?? 500;
    this._maxDelay = options.maxReconnectDelay ?? 10000;
    this._pingInterval = options.pingInterval ?? 20000;
    this._lazyData = options.lazyData === true;
    /** Event name → its handlers; a new array on each change, so that an event goes to the handlers as they were
     *  when it began without a copy per event (10,000 updates a second in a fleet's dashboard). */
    this._handlers = new Map();
    /** Task id (or "*") → the options it was subscribed with; what every new connection subscribes to again. */
    this._subs = new Map();
    this._intervalMs = undefined; // the connection's interval as last set by subscribe()
    /** Task id → {seq, open, gone, order} of the last update delivered. `open`: whether the task can still change,
     *  or (lazyData) the update, read when a resume map needs it. `gone`: the listener did not send the task again
     *  after a reconnect. `order`: the value of `_delivered` then, so that a resume map takes the latest first. */
    this._tasks = new Map();
    this._delivered = 0;
    /** Task id → "resumed" or "sent again" (its state comes again, or nothing if the task is gone) until the
     *  first update of the task after a subscribe that included it. */
    this._pending = new Map();
    /** Delta subscriptions: task id → the last state the listener sent on this connection ({seq, data}, or the
     *  LazyUpdate holding it), which its next merge patch applies to. */
    this._bases = new Map();
    this._inFlight = []; // requests sent on this connection, waiting for their reply (answered in order)
    this._waiting = []; // requests made while not connected, sent once connected
    this._resubscribers = []; // subscribe() calls that the next connection's subscribe answers
    this._everOpen = false;
    this._resumed = null; // {tasks, replayed} of the resubscribe after a reconnect, until the listener has sent all
    this._resumeBudget = RESUME_BUDGET;
    this._frameBudget = RESUME_BUDGET; // lowered by a listener that refused a frame this size (`_lost`)
    this._forgetAt = FINISHED_KEPT; // the size of _tasks at which finished tasks are forgotten (`_forgetFinished`)
    this._attempt = 0;
    this._proving = false; // the connection sent requests and has had no answer yet (see _established)
    this._state = "connecting";
    this._clientId = options.clientId ?? null;
    this._ws = null;
    this._timer = null;
    this._pinger = null;
    this._connect();
  }

  /** "connecting" (also while waiting to reconnect), "open" or "closed" (after close() or a refusal). */
  get state() {
    return this._state;
  }

  /** The client id the listener knows this client by (its own when none was given), once connected. */
  get clientId() {
    return this._clientId;
  }

  /** Calls handler on each event `name`; returns the function that removes it. */
  on(name, handler) {
    const handlers = this._handlers.get(name) ?? [];
    if (!handlers.includes(handler)) this._handlers.set(name, [...handlers, handler]);
    return () => {
      const now = this._handlers.get(name);
      if (now.includes(handler)) this._handlers.set(name, now.filter((h) => h !== handler));
    };
  }

  /**
   * Watches tasks (or "*": every task) from now on, on this connection and every later one.
   * @returns a Promise of the ids, resolved when the listener answers `subscribed`.
   */
  subscribe(taskIds, options = {}) {
    const ids = idList(taskIds);
    const added = ids.filter((id) => !this._subs.has(id));
    const subOptions = {};
    if (options.delta !== undefined) subOptions.delta = options.delta;
    // The listener's interval is the connection's: the latest subscribe that gives one sets it.
    if (options.intervalMs !== undefined) subOptions.interval_ms = this._intervalMs = options.intervalMs;
    for (const id of ids) this._subs.set(id, subOptions);
    // Patches the listener queued before it took this subscribe come before its answer: a base no longer needed
    // (delta switched off) goes with the answer, as in unsubscribe().
    const done = (value) => {
      for (const id of ids.includes("*") ? [...this._bases.keys()] : ids) if (!this._deltaFor(id)) this._bases.delete(id);
      return value;
    };
    return new Promise((resolve, reject) => {
      const waiter = { ids, added, resolve: (value) => resolve(done(value)), reject };
      if (this._state === "closed") reject(closedError());
      else if (this._state !== "open") this._resubscribers.push(waiter);
      else {
        // On this connection the listener has sent the known tasks already: nothing to resume. Many ids go in
        // frames within the listener's bound, the call answered once all are.
        const chunks = this._frameChunks(ids, false);
        const parts = partWaiters(waiter, chunks);
        chunks.forEach((chunk, i) => this._send({ message: { type: "subscribe", task_ids: chunk, ...subOptions },
          waiters: [parts[i]] }));
      }
    });
  }

  /** Stops watching tasks (or "*"); resolved when the listener answers (at once while not connected). */
  unsubscribe(taskIds) {
    const ids = idList(taskIds);
    for (const id of ids) this._subs.delete(id);
    const dropBases = () => {
      for (const id of ids.includes("*") ? [...this._bases.keys()] : ids) if (!this._deltaFor(id)) this._bases.delete(id);
    };
    // A task watched no more is resumed no more: a later subscribe starts from its current state.
    for (const id of this._subs.has("*") ? [] : ids.includes("*") ? [...this._tasks.keys()] : ids) {
      if (!this._subs.has(id)) this._tasks.delete(id);
    }
    if (this._state !== "open") {
      dropBases();
      return Promise.resolve();
    }
    // Patches the listener queued before it took the unsubscribe come before its answer, against the bases held
    // now (a task still watched through "*" gets them): the bases go with the answer.
    return this._request({ type: "unsubscribe", task_ids: ids }).then(() => dropBases());
  }

  /** A task's TaskProgress, asked over the WebSocket (no CORS needed); rejects with code "not_found". */
  getProgress(taskId) {
    return this._request({ type: "get_progress", task_id: taskId }).then((reply) => reply.data);
  }

  /** A batch's BatchProgress: the tasks created with that batch_id, or the given ones. */
  getBatchProgress(batchId, taskIds) {
    const message = { type: "get_batch_progress", batch_id: batchId };
    if (taskIds !== undefined) message.task_ids = [...taskIds];
    return this._request(message).then((reply) => reply.data);
  }

  /**
   * Asks for a task to be stopped: resolves once the listener has recorded the request (`cancel.accepted`); the
   * task's runner stops it, and its updates show `cancel_requested` and then `status: "cancelled"`. Rejects with
   * code "not_found", "conflict" (the task finished), "invalid_message" (a bad id, a reason over 1,024 bytes) or
   * "unavailable" (a fleet's Redis is unreachable: try again). Asking twice is harmless, so a request without a reply
   * when the connection is lost is sent again on the next one.
   */
  cancel(taskId, options = {}) {
    const message = { type: "cancel", task_id: taskId };
    if (options.reason !== undefined && options.reason !== null) message.reason = String(options.reason);
    return this._request(message).then(() => undefined);
  }

  /**
   * Drops the connection as a lost network would and connects again after `delay` ms (0: at once), then subscribes
   * and resumes as after any loss. While waiting to reconnect, the next attempt is moved to `delay` ms from now.
   */
  reconnect(delay = 0) {
    if (this._state === "closed") return;
    const ws = this._ws;
    if (ws) {
      this._ws = null;
      ws.close(4000, "reconnect asked");
      this._lost(4000, "reconnect asked", delay);
    } else {
      clearTimeout(this._timer);
      this._retry(undefined, "reconnect asked", delay);
    }
  }

  /** Closes the connection for good; pending requests reject with code "closed". Idempotent. */
  close() {
    if (this._state === "closed") return;
    const ws = this._ws;
    this._ws = null;
    if (ws) ws.close(1000, "client closed");
    this._shutdown(closedError());
  }

  // ---- connection -------------------------------------------------------------------------------------

  _connect() {
    this._timer = null;
    if (this._state === "closed") return;
    let ws;
    try {
      ws = new this._WebSocket(this._url);
    } catch (error) {
      // Thrown at once: the runtime refuses the URL (a ws:// from an https:// page, say), which no retry changes.
      // Reported after the constructor has returned, so that the handlers added next hear of it.
      queueMicrotask(() => {
        if (this._state === "closed") return;
        this._shutdown(error);
        this._emit("error", error);
      });
      return;
    }
    this._ws = ws;
    // A replaced or dead socket may still fire: only the current one counts.
    ws.onmessage = (event) => {
      if (this._ws === ws) this._message(event.data);
    };
    ws.onclose = (event) => {
      if (this._ws === ws) this._lost(event.code, event.reason);
    };
    // A failed connection fires error, then close; Node 20's WebSocket fires error alone. A close in the same
    // task still wins (its code may be a refusal).
    ws.onerror = () => {
      setTimeout(() => {
        if (this._ws === ws) this._lost(1006, "the connection failed");
      }, 0);
    };
  }

  /** `connection.established`: the listener accepted this client (a refusal closes right after the handshake). */
  _established(message) {
    this._clientId = message.client_id;
    this._lastHeard = Date.now();
    this._heard = false;
    if (this._pingInterval > 0) this._pinger = setInterval(() => this._ping(), this._pingInterval);
    const reconnected = this._everOpen;
    this._everOpen = true;
    // The back-off starts again once the connection has proved itself: the listener answered what it was sent
    // (one that closes on the resubscribe, as on a frame over its limits, would else be retried at once forever).
    const sent = this._resubscribe(reconnected) || this._waiting.length > 0;
    this._proving = sent;
    if (!sent) this._attempt = 0;
    for (const request of this._waiting.splice(0)) this._send(request);
    this._setState("open");
  }

  /**
   * Subscribes the new connection to everything watched, resuming each task from its last seq. After a reconnect,
   * a ping follows: the listener answers in order, and a message that follows a subscribe is handled only once
   * everything the subscribe brings (replayed events, the current states) is queued, so its pong says that the
   * tasks not sent again are gone.
   *
   * The listener refuses a subscribe as a whole (a bad id, a limit) and closes on a frame over its
   * max_message_bytes, so: what was watched before goes in frames of its own, each within RESUME_BUDGET bytes with
   * its resume map; each subscribe() made meanwhile that adds tasks goes in a frame of its own, answered to it (a
   * refused one takes only its own tasks with it); the others are answered with the last frame.
   */
  _resubscribe(reconnected) {
    const waiters = this._resubscribers.splice(0);
    const own = new Map(); // waiter → the tasks it adds, still watched
    for (const w of waiters) {
      const ids = w.added.filter((id) => this._subs.has(id));
      if (ids.length > 0) own.set(w, ids);
    }
    const added = new Set([...own.values()].flat());
    const frames = [];
    for (const [key, ids] of this._byOptions([...this._subs.keys()].filter((id) => !added.has(id)))) {
      for (const chunk of this._frameChunks(ids)) {
        const message = { type: "subscribe", task_ids: chunk, ...JSON.parse(key) };
        const resume = this._resumeMap(chunk);
        if (resume) message.resume = resume;
        frames.push({ message, waiters: [] });
      }
    }
    const restoring = frames.length;
    for (const [w, ids] of own) {
      // Its tasks as watched now (a later call may have changed the options of some): a frame per set of options
      // and run of ids within the bound, the call answered once all are, refused if one is.
      const parts = [];
      for (const [key, part] of this._byOptions(ids)) {
        for (const chunk of this._frameChunks(part, false)) parts.push([key, chunk]);
      }
      const waiters = partWaiters(w, parts.map(([, chunk]) => chunk));
      parts.forEach(([key, chunk], i) => {
        const message = { type: "subscribe", task_ids: chunk, ...JSON.parse(key) };
        if (chunk.includes("*")) {
          const resume = this._resumeMap(["*"]);
          if (resume) message.resume = resume;
        }
        frames.push({ message, waiters: [waiters[i]] });
      });
    }
    const rest = waiters.filter((w) => !own.has(w));
    if (frames.length === 0) {
      for (const w of rest) w.resolve(w.ids); // unsubscribed again before the connection came
      return false;
    }
    // The calls that add nothing are answered with what was watched before (a frame the listener refuses only
    // with its own tasks), or else with the last frame.
    frames[restoring > 0 ? restoring - 1 : frames.length - 1].waiters.push(...rest);
    // The interval is the connection's, set by the last subscribe() that gave one: every frame carries it, so that
    // one the listener refuses does not leave it unset.
    if (this._intervalMs !== undefined) for (const frame of frames) frame.message.interval_ms = this._intervalMs;
    for (const frame of frames) this._send(frame);
    this._resumeBudget = RESUME_BUDGET;
    if (reconnected) {
      this._resumed = { tasks: 0, replayed: 0 };
      this._send({ message: { type: "ping" }, resumed: true });
    }
    return true;
  }

  /** Watched `ids` by the options they are subscribed with but the interval (the connection's): JSON → ids. */
  _byOptions(ids) {
    const groups = new Map();
    for (const id of ids) {
      const { interval_ms: _, ...options } = this._subs.get(id);
      const key = JSON.stringify(options);
      if (!groups.has(key)) groups.set(key, []);
      groups.get(key).push(id);
    }
    return groups;
  }

  /**
   * `ids` in runs whose subscribe frame, ids and (with `resume`) resume entries, stays within the frame budget
   * (RESUME_BUDGET bytes, less after the listener refused a frame); "*" (whose resume map covers every task and is
   * cut to the budget by `_resumeMap`) in a run of its own.
   */
  _frameChunks(ids, resume = true) {
    const chunks = ids.includes("*") ? [["*"]] : [];
    let chunk = [];
    let size = 64;
    for (const id of ids) {
      if (id === "*") continue;
      const bytes = utf8Length(JSON.stringify(id));
      const task = resume && this._resumeBudget > 0 ? this._tasks.get(id) : undefined;
      const cost = bytes + 1 + (task && !task.gone && task.open !== false ? bytes + String(task.seq).length + 2 : 0);
      if (chunk.length > 0 && size + cost > this._frameBudget) {
        chunks.push(chunk);
        chunk = [];
        size = 64;
      }
      chunk.push(id);
      size += cost;
    }
    if (chunk.length > 0) chunks.push(chunk);
    return chunks;
  }

  /**
   * {task id: last seq delivered} of the open tasks among `ids` ("*": all), most recently updated first, within
   * the budget. A finished task is left out: its state cannot change, and the listener sends it again anyway.
   */
  _resumeMap(ids) {
    const wanted = ids.includes("*") ? null : new Set(ids);
    const resume = {};
    let size = 2;
    let any = false;
    for (const [id, task] of [...this._tasks].sort((a, b) => b[1].order - a[1].order)) {
      if (task.gone || (wanted && !wanted.has(id))) continue;
      if (task.open instanceof LazyUpdate) {
        task.created = task.open.data?.created_at;
        task.open = !TERMINAL.has(task.open.data.status);
      }
      const entry = task.open ? utf8Length(JSON.stringify(id)) + String(task.seq).length + 2 : Infinity;
      const fits = size + entry <= Math.min(this._resumeBudget, this._frameBudget - 64);
      if (fits) {
        size += entry;
        resume[id] = task.seq;
        any = true;
      }
      this._pending.set(id, fits ? "resumed" : "sent again");
    }
    return any ? resume : null;
  }

  _lost(code, reason, delay) {
    this._ws = null;
    this._stopPinger();
    const refusal = REFUSED[code];
    if (refusal) {
      const error = new ProgressError(refusal, reason || `the listener refused the connection (close ${code})`, code);
      this._shutdown(error);
      this._emit("error", error);
      return;
    }
    this._pending.clear();
    this._bases.clear(); // a new connection starts every delta subscription with the full state
    this._resumed = null;
    const inFlight = this._inFlight.splice(0);
    for (const r of inFlight) if (r.waiters) this._resubscribers.push(...r.waiters);
    if (code === TOO_LARGE) {
      // A message was over the listener's max_message_bytes. A resubscribe's resume map is the likely one: the
      // next goes without it (the gaps become resync events). Else a subscribe frame: the next are cut to half
      // the largest sent (subscribe() calls go again, in those), and below MIN_FRAME_BUDGET no retry can help.
      // Another request sent again would be refused again.
      const error = new ProgressError("message_too_large", reason || "over the listener's max_message_bytes", code);
      const frames = inFlight.filter((r) => r.message.type === "subscribe");
      if (frames.some((r) => r.message.resume)) this._resumeBudget = 0;
      else if (frames.length > 0) {
        const largest = Math.max(...frames.map((r) => utf8Length(JSON.stringify(r.message))));
        if (largest <= MIN_FRAME_BUDGET) {
          this._shutdown(error);
          this._emit("error", error);
          return;
        }
        this._frameBudget = Math.max(MIN_FRAME_BUDGET, Math.min(this._frameBudget, Math.floor(largest / 2)));
      }
      for (const r of inFlight) r.reject?.(error);
    } else {
      // Requests without a reply go again on the next connection (all are reads, or idempotent).
      this._waiting.unshift(...inFlight.filter((r) => r.resolve));
    }
    this._setState("connecting", { code, reason });
    // A "state" handler may have closed the client, or asked to reconnect (which scheduled the attempt).
    if (this._state !== "connecting" || this._timer !== null) return;
    this._retry(code, reason, delay);
  }

  /**
   * Schedules the next attempt: after `delay` ms when given, else after a jittered exponential back-off, so that
   * many clients of a restarted listener do not all come back at once.
   */
  _retry(code, reason, delay) {
    if (delay === undefined) {
      const base = Math.min(this._maxDelay, this._minDelay * 2 ** this._attempt);
      delay = Math.round(base * (0.5 + Math.random() / 2));
    }
    this._attempt += 1;
    this._timer = setTimeout(() => this._connect(), delay);
    this._emit("retry", { attempt: this._attempt, delay, code, reason });
  }

  _ping() {
    // A message read sets _heard, which costs less than a clock read per message; the time is taken here.
    const now = Date.now();
    if (this._heard) {
      this._heard = false;
      this._lastHeard = now;
    }
    // Silence for two pings: a connection that died without a close (a sleeping laptop, a dropped network),
    // which the runtime would notice only after minutes.
    if (now - this._lastHeard > 2 * this._pingInterval) {
      const dead = this._ws;
      this._ws = null;
      dead.close(4000, "no answer from the listener");
      this._lost(1006, "no answer from the listener");
      return;
    }
    this._send({ message: { type: "ping" } });
  }

  _stopPinger() {
    clearInterval(this._pinger);
    this._pinger = null;
  }

  _shutdown(error) {
    clearTimeout(this._timer);
    this._timer = null;
    this._stopPinger();
    const requests = [...this._inFlight.splice(0), ...this._waiting.splice(0)];
    for (const r of requests) {
      r.reject?.(error);
      for (const w of r.waiters || []) w.reject(error);
    }
    for (const w of this._resubscribers.splice(0)) w.reject(error);
    this._setState("closed", { code: error.closeCode, reason: error.message });
  }

  _setState(state, detail = {}) {
    if (state === this._state) return;
    this._state = state;
    this._emit("state", state, detail);
  }

  // ---- requests and messages --------------------------------------------------------------------------

  _request(message) {
    return new Promise((resolve, reject) => {
      const request = { message, resolve, reject };
      if (this._state === "closed") reject(closedError());
      else if (this._state === "open") this._send(request);
      else this._waiting.push(request);
    });
  }

  _send(request) {
    this._inFlight.push(request);
    this._ws.send(JSON.stringify(request.message));
  }

  _message(text) {
    this._heard = true;
    if (this._lazyData) {
      const update = peekUpdate(text);
      if (update) {
        this._keepBase(update);
        this._update(update);
        return;
      }
    }
    let message;
    try {
      message = JSON.parse(text);
    } catch {
      return; // the listener sends JSON text frames only
    }
    switch (message.type) {
      case "connection.established":
        this._established(message);
        break;
      case "progress.update":
        if (message.patch !== undefined) message = this._patched(message);
        else this._keepBase(message);
        if (message) this._update(message);
        break;
      case "task.log":
        if (this._watching(message.task_id)) this._emit("log", message);
        break;
      default:
        if (REPLIES.has(message.type)) this._reply(message);
    }
  }

  _reply(message) {
    // Written at once, ahead of the replies queued before it, and followed by close 1009 (see _lost).
    if (message.code === "message_too_large") return;
    if (this._proving) {
      this._proving = false;
      this._attempt = 0;
    }
    const request = this._inFlight.shift();
    const error = message.type === "error" ? new ProgressError(message.code, message.message) : null;
    if (!request) {
      if (error) this._emit("error", error);
      return;
    }
    if (request.waiters) {
      this._subscribed(request, error);
    } else if (request.resumed) {
      this._caughtUp();
    } else if (request.resolve) {
      if (error) request.reject(error);
      else request.resolve(message);
    } else if (error) {
      this._emit("error", error); // a ping refused: nothing waits for it
    }
  }

  _subscribed(request, error) {
    if (!error) {
      for (const w of request.waiters) w.resolve(w.ids);
      return;
    }
    // Refused: its tasks are not sent again, and not gone either.
    const ids = request.message.task_ids;
    if (ids.includes("*")) this._pending.clear();
    else for (const id of ids) this._pending.delete(id);
    // A refused subscribe (a bad id, too many subscriptions) is forgotten, so it is not sent again on reconnect.
    for (const w of request.waiters) {
      for (const id of w.added) this._subs.delete(id);
      w.reject(error);
    }
    if (request.waiters.length === 0) this._emit("error", error);
  }

  _watching(taskId) {
    return this._subs.has("*") || this._subs.has(taskId);
  }

  /** The pong after a reconnect's resubscribe: the tasks still expected were not sent again. */
  _caughtUp() {
    const gone = [];
    for (const id of this._pending.keys()) {
      const task = this._tasks.get(id);
      if (!task) continue;
      task.gone = true; // resumed no more; delivered again if it comes back (a fleet listener that was behind)
      gone.push(id);
    }
    this._pending.clear();
    const { tasks, replayed } = this._resumed;
    this._resumed = null;
    this._emit("resumed", { tasks, replayed, gone });
  }

  /**
   * Delivers each task's updates once and in seq order, and says when it cannot (a `resync` event). Within one
   * connection the listener sends a task's states in seq order, skipping those it coalesced (each update holds
   * the whole state); on a subscribe it sends the current state again, after replaying the missed events of a
   * resumed task and with a `recovered` flag.
   */
  _update(message) {
    const id = message.task_id;
    if (!this._watching(id)) return; // queued before an unsubscribe
    const known = this._tasks.get(id);
    let pending = this._pending.size === 0 ? undefined : this._pending.get(id);
    if (pending) {
      this._pending.delete(id);
      if (this._resumed) this._resumed.tasks += 1;
    }
    // A task reported gone that comes back follows as one sent again: a jump, or a lower seq, is a gap.
    if (known?.gone) pending = "sent again";
    const verdict = known ? follows(message, known.seq, pending, madeAnew(known, message, pending)) : "in order";
    if (verdict === "duplicate") return;
    if (verdict === "gap") this._emit("resync", { task_id: id, seq: message.seq, last_seq: known.seq });
    if (message.replayed && this._resumed) this._resumed.replayed += 1;
    // A finished task keeps no state here: the listener never patches one, and never resumes one.
    const finished = message instanceof LazyUpdate ? message.finished : TERMINAL.has(message.data?.status);
    if (finished) this._bases.delete(id);
    const open = finished ? false : message instanceof LazyUpdate ? message : true;
    // A lazy update's created_at is read only when needed: from the update kept in `open` (`madeAnew`, `_resumeMap`),
    // or, for a final state, which `open` does not keep, from its text now (once per task).
    const created = !(message instanceof LazyUpdate) ? message.data?.created_at
      : finished ? message.createdAt : undefined;
    if (known) {
      known.seq = message.seq;
      known.open = open;
      known.created = created;
      known.gone = false;
      known.order = ++this._delivered;
    } else {
      this._tasks.set(id, { seq: message.seq, open, created, gone: false, order: ++this._delivered });
      if (this._tasks.size > this._forgetAt) this._forgetFinished();
    }
    this._emit("update", message);
  }

  /** Forgets the least recently updated finished tasks past FINISHED_KEPT / 2 (not those a resubscribe awaits). */
  _forgetFinished() {
    const finished = [];
    for (const [id, task] of this._tasks) if (task.open === false && !this._pending.has(id)) finished.push(id);
    if (finished.length > FINISHED_KEPT) {
      finished.sort((a, b) => this._tasks.get(a).order - this._tasks.get(b).order);
      for (const id of finished.slice(0, finished.length - FINISHED_KEPT / 2)) this._tasks.delete(id);
    }
    // The next look after as many new tasks again: a scan per FINISHED_KEPT / 2 tasks, whatever is open.
    this._forgetAt = this._tasks.size + FINISHED_KEPT / 2;
  }

  /**
   * A full update becomes the task's base when its updates come as patches, and also while a base is held: the
   * listener applies a subscribe that switches delta off one round trip later, and a full state it sent before
   * that may still be followed by a patch against it. The base goes with the subscribe's answer (`subscribe`).
   */
  _keepBase(update) {
    const id = update.task_id;
    if (this._deltaFor(id) || this._bases.has(id)) this._bases.set(id, update);
  }

  /** Whether the task's updates come as merge patches: its own subscription's `delta`, else "*"'s. */
  _deltaFor(id) {
    return (this._subs.get(id) ?? this._subs.get("*"))?.delta === true;
  }

  /**
   * A merge patch (delta subscriptions) as the full update it stands for. The listener only sends one against the
   * state it sent last on this connection; should the base ever differ, the patch is dropped and the task
   * subscribed again, which sends its full state.
   */
  _patched(message) {
    const base = this._bases.get(message.task_id);
    const id = message.task_id;
    if (base === undefined || base.seq !== message.base_seq) {
      this._bases.delete(id);
      // Asked again only while the task's updates are to come as patches (a patch that crosses a subscribe
      // switching delta off is dropped: the full states that follow close the gap, with a `resync`).
      if (this._state === "open" && this._deltaFor(id)) {
        const { interval_ms: _, ...options } = this._subs.get(id) ?? { delta: true };
        this._request({ type: "subscribe", task_ids: [id], ...options }).catch(() => {});
        // A task watched through "*" alone: its subscription by id, which sent the full state, goes again.
        if (!this._subs.has(id)) this._request({ type: "unsubscribe", task_ids: [id] }).catch(() => {});
      }
      return null;
    }
    const update = { type: message.type, task_id: message.task_id, seq: message.seq,
      data: applyMergePatch(base.data, message.patch) };
    this._bases.set(message.task_id, update);
    return update;
  }

  _emit(name, event, detail) {
    const handlers = this._handlers.get(name);
    if (!handlers) return;
    for (const handler of handlers) {
      try {
        handler(event, detail);
      } catch (error) {
        // A handler's exception must not break the client's bookkeeping; it is still reported as uncaught.
        queueMicrotask(() => {
          throw error;
        });
      }
    }
  }
}

/**
 * A `progress.update` whose `data` is parsed when first read (the lazyData option): a page that draws a few of
 * thousands of tasks need not parse every update of the others.
 */
class LazyUpdate {
  #text;
  #data;

  constructor(text, taskId, seq) {
    this.type = "progress.update";
    this.task_id = taskId;
    this.seq = seq;
    this.#text = text;
  }

  get data() {
    if (this.#text !== null) {
      this.#data = JSON.parse(this.#text).data;
      this.#text = null;
    }
    return this.#data;
  }

  /** Whether the task's status is a final one, read from the text's first "status" (the task's own: the members
   *  before it are strings, and a string's quotes are escaped) without parsing it. */
  get finished() {
    if (this.#text === null) return TERMINAL.has(this.#data?.status);
    const at = this.#text.indexOf('"status":"');
    if (at < 0) return TERMINAL.has(this.data?.status);
    const end = this.#text.indexOf('"', at + 10);
    return TERMINAL.has(this.#text.slice(at + 10, end));
  }

  /** The task's created_at, read from the text's first "created_at" (the task's own: the members before it hold
   *  no key of the sender's, and a string's quotes are escaped) without parsing it. */
  get createdAt() {
    if (this.#text === null) return this.#data?.created_at;
    const at = this.#text.indexOf('"created_at":"');
    if (at < 0) return this.data?.created_at;
    return this.#text.slice(at + 14, this.#text.indexOf('"', at + 14));
  }

  toJSON() {
    return { type: this.type, task_id: this.task_id, seq: this.seq, data: this.data };
  }
}

/**
 * A plain `progress.update` as a LazyUpdate, read from its head alone; null for anything else (parsed whole), such
 * as an update with "replayed" or "recovered", which come only after a reconnect. An id's own quotes are escaped,
 * so the first '","seq":' ends it.
 */
function peekUpdate(text) {
  if (typeof text !== "string" || !text.startsWith(UPDATE_HEAD)) return null;
  const idEnd = text.indexOf('","seq":', UPDATE_HEAD.length);
  if (idEnd < 0) return null;
  const seqStart = idEnd + 8;
  const seqEnd = text.indexOf(",", seqStart);
  if (seqEnd <= seqStart || !text.startsWith(',"data":', seqEnd)) return null;
  if (seqEnd - seqStart > 15) return null; // over Number.MAX_SAFE_INTEGER: parsed whole, as it would be anyway
  let seq = 0;
  for (let i = seqStart; i < seqEnd; i++) {
    const digit = text.charCodeAt(i) - 48;
    if (digit < 0 || digit > 9) return null;
    seq = seq * 10 + digit;
  }
  let id = text.slice(UPDATE_HEAD.length, idEnd);
  if (id.includes("\\")) {
    try {
      id = JSON.parse('"' + id + '"');
    } catch {
      return null;
    }
  }
  return new LazyUpdate(text, id, seq);
}

/**
 * Whether an update belongs to another task than the last one delivered under its id (their `created_at` differ):
 * a listener restarted without its data can have a task made anew at the very seq the client holds, and cannot tell,
 * so it sends that state as `recovered: true` or as the state sent again. A lazy update is read for it only as the
 * first after a subscribe; within one connection a task made anew starts again at a lower seq.
 */
function madeAnew(known, message, pending) {
  if (message instanceof LazyUpdate && !pending) return false;
  const created = message.data?.created_at;
  if (created === undefined) return false;
  const held = known.open instanceof LazyUpdate ? known.open.data?.created_at : known.created;
  return held !== undefined && held !== created;
}

/**
 * How an update of a task stands to the last one delivered (`lastSeq`): "in order", "duplicate" (drop it) or
 * "gap" (deliver it, and say that what came between is lost). `pending`: "resumed" or "sent again" for the
 * task's first update after a subscribe that included it; `anew`: the update is of a task made anew under the id.
 */
function follows(message, lastSeq, pending, anew) {
  if (anew) return "gap";
  if (message.replayed || message.recovered === true) return message.seq > lastSeq ? "in order" : "duplicate";
  // The listener could not replay what was missed: its history is gone, or the task was made anew.
  if (message.recovered === false) return "gap";
  if (message.seq === lastSeq && pending !== "resumed") return "duplicate"; // the state sent again on a subscribe
  // A lower seq: the task was made anew (it expired and was created again, or a listener lost it). A resumed
  // task's first update without a flag: the listener did not have the task when it was subscribed. A jump right
  // after a subscribe: the task was not resumed (over the budget, or finished when the connection was lost).
  // Within one connection a jump is no gap: the listener coalesced states, and each holds the whole task.
  if (message.seq < lastSeq || pending === "resumed" || (pending && message.seq > lastSeq + 1)) return "gap";
  return "in order";
}

/**
 * The waiters of the frames a subscribe() call's tasks go in (`parts`, runs of its ids): the call is answered once
 * every frame is, and refused with the first refusal.
 */
function partWaiters(w, parts) {
  if (parts.length === 1) return [w];
  const added = new Set(w.added);
  let left = parts.length;
  let refused = false;
  return parts.map((part) => ({
    ids: part,
    added: part.filter((id) => added.has(id)),
    resolve: () => { if (--left === 0 && !refused) w.resolve(w.ids); },
    reject: (error) => { if (!refused) { refused = true; w.reject(error); } },
  }));
}

/**
 * RFC 7386 JSON Merge Patch: objects merge member by member, null removes a member, anything else replaces. The
 * listener never sends a null (a member that becomes null comes as a full state), so every key of TaskProgress,
 * null ones included, stays. Unchanged parts are shared with `target`, which is not modified.
 */
export function applyMergePatch(target, patch) {
  if (patch === null || typeof patch !== "object" || Array.isArray(patch)) return patch;
  const out = target !== null && typeof target === "object" && !Array.isArray(target) ? { ...target } : {};
  for (const key of Object.keys(patch)) {
    const value = patch[key];
    if (value === null) delete out[key];
    else out[key] = applyMergePatch(out[key], value);
  }
  return out;
}

/** The listener's WebSocket URL from the engine's base URL (http(s) or ws(s), any path prefix of a proxy). */
function webSocketURL(base, token, clientId) {
  if (!base) {
    throw new TypeError("ProgressClient needs {url}: the engine's base URL, such as http://127.0.0.1:8000");
  }
  const url = new URL(base, globalThis.location?.href);
  const schemes = { "http:": "ws:", "https:": "wss:", "ws:": "ws:", "wss:": "wss:" };
  if (!schemes[url.protocol]) throw new TypeError(`url must be http(s):// or ws(s)://, not ${url.protocol}`);
  url.protocol = schemes[url.protocol];
  url.pathname = url.pathname.replace(/\/+$/, "") + WS_PATH;
  url.hash = "";
  if (clientId) url.searchParams.set("client_id", clientId);
  // A browser's WebSocket cannot send an Authorization header: the listener takes ?token= as well.
  if (token) url.searchParams.set("token", token);
  return url.href;
}

function idList(taskIds) {
  const ids = typeof taskIds === "string" ? [taskIds] : [...taskIds];
  if (ids.length === 0 || !ids.every((id) => typeof id === "string")) {
    throw new TypeError('task ids must be a non-empty list of strings (or "*")');
  }
  return ids;
}

function closedError() {
  return new ProgressError("closed", "the client was closed");
}

const encoder = new TextEncoder();
function utf8Length(text) {
  return encoder.encode(text).length;
}
