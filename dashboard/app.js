// ProgressEngine live dashboard (SPEC §8): one WebSocket subscribed to "*", every task drawn live.
// Plain script, no framework, no external assets. Everything that comes from the server (task ids, messages,
// errors, log lines) reaches the page through textContent or attributes, never as markup.
"use strict";

(function () {
  const WS_PATH = "/api/v1/progress/ws";
  const API = "/api/v1/progress";
  const BACKOFF_MIN_MS = 500;
  const BACKOFF_MAX_MS = 5000;
  const PING_MS = 20000;
  const RECONNECTED_NOTICE_MS = 10000;
  const MAX_FINISHED = 300; // finished tasks kept on the page; the oldest beyond that are dropped
  const MAX_LOGS = 300; // log entries kept per task
  const SPARK_POINTS = 60; // resource samples kept per task and resource
  const SAMPLE_MS = 250; // at most one sparkline point per this interval
  const WARN_MS = 10000;
  const STALE_AFTER_MS = 3000; // an open task not re-sent this long after a (re)subscribe is no longer reported
  const RESUME_BUDGET = 48000; // UTF-8 bytes of the resume map (the listener caps frames at 64 KiB by default)
  const TERMINAL = new Set(["completed", "failed", "cancelled"]);
  const STATUSES = ["queued", "executing", "completed", "failed", "cancelled"];
  const SVG_NS = "http://www.w3.org/2000/svg";
  const RESOURCES = [
    { key: "cpu_percent", label: "CPU", unit: "%", percent: true },
    { key: "memory_mb", label: "Mem", unit: "MB", percent: false },
    { key: "gpu_percent", label: "GPU", unit: "%", percent: true },
  ];

  const params = new URLSearchParams(location.search);
  const token = params.get("token");
  const tokenQuery = token ? "?token=" + encodeURIComponent(token) : "";

  const $ = (id) => document.getElementById(id);
  const ui = {
    conn: $("conn"),
    banner: $("banner"),
    counts: $("counts"),
    templatesBody: $("templates-body"),
    templates: $("templates"),
    list: $("list"),
    empty: $("empty"),
    detail: $("detail"),
    detailTitle: $("detail-title"),
    detailHint: $("detail-hint"),
    detailBody: $("detail-body"),
    detailError: $("detail-error"),
    detailStages: $("detail-stages-body"),
    log: $("log"),
    dialog: $("preview-dialog"),
    dialogTitle: $("preview-title"),
    dialogImg: $("preview-full"),
    dialogClose: $("preview-close"),
  };

  /** task_id → task state (a Map, so no id can collide with an object's own properties). */
  const tasks = new Map();
  /** batch_id → {el, tasksEl, ...} */
  const batches = new Map();
  let selected = null;
  let arrivals = 0;
  let dialogOpener = null;
  let renderQueued = false;
  const dirty = new Set();
  let analyticsDirty = true;
  /** Browser clock minus the server's, estimated from updated_at of live updates (ms). */
  let clockOffset = null;

  const conn = {
    ws: null,
    attempt: 0,
    timer: null,
    pingTimer: null,
    noticeTimer: null,
    everConnected: false,
    reconnects: 0,
    fatal: false,
    lastMessage: 0,
    epoch: 0,
    staleTimer: null,
    warnTimer: null,
    caughtUp: 0,
    replayed: 0,
  };

  // ---------------------------------------------------------------- helpers

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function svg(tag, attrs) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    return node;
  }

  function setText(node, text) {
    const value = text === undefined || text === null ? "" : String(text);
    if (node.textContent !== value) node.textContent = value;
  }

  function num(v) {
    return typeof v === "number" && isFinite(v) ? v : null;
  }

  function parseTime(iso) {
    if (typeof iso !== "string" || !iso) return null;
    const t = Date.parse(iso);
    return isNaN(t) ? null : t;
  }

  function serverNow() {
    return Date.now() - (clockOffset || 0);
  }

  /** 75 → "1:15", 3700 → "1:01:40", 4.2 → "4.2 s". */
  function formatDuration(seconds) {
    if (seconds === null || !isFinite(seconds)) return "—";
    if (seconds < 0) seconds = 0;
    if (seconds < 10) return seconds.toFixed(1) + " s";
    const s = Math.round(seconds);
    const h = Math.floor(s / 3600);
    const m = Math.floor((s % 3600) / 60);
    const sec = String(s % 60).padStart(2, "0");
    return h > 0 ? h + ":" + String(m).padStart(2, "0") + ":" + sec : m + ":" + sec;
  }

  function formatPercent(p) {
    return (Math.round(p * 10) / 10).toFixed(1) + " %";
  }

  function formatClock(iso) {
    const t = parseTime(iso);
    if (t === null) return "";
    const d = new Date(t);
    const pad = (n, w) => String(n).padStart(w || 2, "0");
    return pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds()) + "." + pad(d.getMilliseconds(), 3);
  }

  function formatResource(res, value) {
    if (value === null) return "—";
    if (res.percent) return Math.round(value) + " %";
    return value >= 1024 ? (value / 1024).toFixed(1) + " GB" : Math.round(value) + " MB";
  }

  function stageList(data) {
    const stages = data && data.stages && typeof data.stages === "object" ? data.stages : {};
    return Object.keys(stages)
      .filter((k) => /^\d+$/.test(k))
      .sort((a, b) => Number(a) - Number(b))
      .map((k) => Object.assign({ index: Number(k) }, stages[k]));
  }

  // ---------------------------------------------------------------- connection

  function setConn(state, text) {
    ui.conn.dataset.state = state;
    setText(ui.conn, text);
    document.body.dataset.conn = state;
  }

  function showBanner(kind, text) {
    ui.banner.dataset.kind = kind;
    setText(ui.banner, text);
    ui.banner.hidden = false;
  }

  function hideBanner() {
    ui.banner.hidden = true;
    setText(ui.banner, "");
  }

  function wsURL() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const clientId = "dashboard-" + Math.random().toString(36).slice(2, 10);
    let url = scheme + "//" + location.host + WS_PATH + "?client_id=" + clientId;
    if (token) url += "&token=" + encodeURIComponent(token);
    return url;
  }

  function connect() {
    clearTimeout(conn.timer);
    conn.timer = null;
    let ws;
    try {
      ws = new WebSocket(wsURL());
    } catch (e) {
      scheduleReconnect("could not open a WebSocket (" + e.message + ")");
      return;
    }
    conn.ws = ws;
    ws.onmessage = (event) => {
      if (conn.ws !== ws) return;
      conn.lastMessage = Date.now();
      let msg;
      try {
        msg = JSON.parse(event.data);
      } catch (e) {
        return; // not JSON: nothing the page can draw
      }
      handleMessage(msg);
    };
    ws.onerror = () => {
      // A failed connection is followed by a close event, which says what happens next.
    };
    ws.onclose = (event) => {
      if (conn.ws !== ws) return;
      conn.ws = null;
      clearInterval(conn.pingTimer);
      onClose(event);
    };
  }

  function onOpen() {
    const wasReconnect = conn.everConnected;
    conn.everConnected = true;
    conn.attempt = 0;
    conn.caughtUp = 0;
    conn.replayed = 0;
    clearTimeout(conn.noticeTimer);
    conn.noticeTimer = null;
    if (wasReconnect) {
      conn.reconnects += 1;
      ui.conn.dataset.reconnects = String(conn.reconnects);
      setConn("live", "Reconnected — live again");
      conn.noticeTimer = setTimeout(() => {
        conn.noticeTimer = null;
        if (ui.conn.dataset.state === "live") setConn("live", "Live");
      }, RECONNECTED_NOTICE_MS);
    } else {
      setConn("live", "Live");
    }
    if (ui.banner.dataset.kind !== "warn") hideBanner();
    send({ type: "subscribe", task_ids: ["*"], resume: resumeMap() });
    clearInterval(conn.pingTimer);
    conn.lastMessage = Date.now();
    conn.pingTimer = setInterval(() => {
      if (Date.now() - conn.lastMessage > 2 * PING_MS + 5000) {
        // Not even a pong for two pings: a connection that died without a close (a sleeping laptop, a
        // dropped network). Give up on it now rather than after the browser's own timeout.
        const dead = conn.ws;
        conn.ws = null;
        clearInterval(conn.pingTimer);
        if (dead) dead.close(4000, "no answer from the listener");
        scheduleReconnect("the listener stopped answering");
        return;
      }
      send({ type: "ping" });
    }, PING_MS);
  }

  /** {task_id: last seq} of the tasks that can still change, most recently updated first, within budget (UTF-8
   *  bytes; none after a subscribe the listener refused as too large, close 1009: the current states come anyway). */
  const utf8 = new TextEncoder();
  let resumeBudget = RESUME_BUDGET;
  function resumeMap() {
    const out = {};
    let size = 2;
    const open = Array.from(tasks.values())
      .filter((t) => !TERMINAL.has(t.data.status) && typeof t.seq === "number")
      .sort((a, b) => b.receivedAt - a.receivedAt);
    for (const t of open) {
      size += utf8.encode(JSON.stringify(t.id)).length + String(t.seq).length + 2;
      if (size > resumeBudget) break;
      out[t.id] = t.seq;
    }
    return out;
  }

  function send(msg) {
    if (conn.ws && conn.ws.readyState === WebSocket.OPEN) conn.ws.send(JSON.stringify(msg));
  }

  function onClose(event) {
    const code = event.code;
    if (code === 4401) {
      conn.fatal = true;
      setConn("unauthorized", token ? "Wrong token" : "Token required");
      showBanner(
        "error",
        token
          ? "The listener refused the token in this page's address (close code 4401: wrong token). " +
              "Open the dashboard again with the right one: " + location.origin + "/?token=YOUR_TOKEN"
          : "This listener requires a token (close code 4401). Open the dashboard with it in the address: " +
              location.origin + "/?token=YOUR_TOKEN"
      );
      return;
    }
    // Refusals that reconnecting cannot change: say why and stop.
    const refused = { 4403: "this page's origin is not in the listener's allowed_origins",
                      4404: "the listener has no WebSocket at this path", 1008: "the listener refused the client id" };
    if (refused[code]) {
      conn.fatal = true;
      setConn("unauthorized", "Refused");
      showBanner("error", "The listener refused this page (close code " + code + ": " + refused[code] +
        (event.reason ? "; " + event.reason : "") + "). Reconnecting would not change that; fix the listener's " +
        "configuration or the page's address, then reload.");
      return;
    }
    let why = "connection lost";
    if (code === 1009) resumeBudget = 0;  // the resume map was too large for the listener: subscribe without it
    if (code === 1013) why = "the listener has too many connections";
    else if (code === 4008) why = "the page fell behind the updates";
    else if (code === 1001) why = "the listener went away";
    else if (!conn.everConnected) why = "the listener is not reachable";
    scheduleReconnect(why + (event.reason ? " (" + event.reason + ")" : ""));
  }

  function scheduleReconnect(why) {
    if (conn.fatal) return;
    clearTimeout(conn.noticeTimer);
    conn.noticeTimer = null;
    // 0.5 s, 1 s, 2 s, 4 s, then 5 s; a little jitter so that many pages do not all come back at once.
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * Math.pow(2, conn.attempt));
    // A drop() from the console may ask to stay away a while (tests make "missed while away" certain).
    const held = Math.max(0, (conn.holdUntil || 0) - Date.now());
    const delay = Math.max(held, Math.round(base * (0.9 + Math.random() * 0.2)));
    conn.attempt += 1;
    const verb = conn.everConnected ? "reconnecting" : "connecting";
    setConn(
      "reconnecting",
      capitalize(why) + " — " + verb + " in " + (delay / 1000).toFixed(1) + " s (attempt " + conn.attempt + ")…"
    );
    clearTimeout(conn.timer);
    conn.timer = setTimeout(() => {
      setConn("reconnecting", capitalize(why) + " — " + verb + "… (attempt " + conn.attempt + ")");
      connect();
    }, delay);
  }

  function capitalize(s) {
    return s ? s.charAt(0).toUpperCase() + s.slice(1) : s;
  }

  // ---------------------------------------------------------------- messages

  function handleMessage(msg) {
    if (!msg || typeof msg !== "object") return;
    switch (msg.type) {
      case "connection.established":
        onOpen();
        break;
      case "progress.update":
      case "progress.current":
        if (msg.replayed) {
          conn.replayed += 1; // a missed event: the full state follows it
          return;
        }
        if (msg.data && typeof msg.data === "object") onProgress(msg);
        break;
      case "task.log":
        if (typeof msg.task_id === "string" && msg.entry) onLog(msg.task_id, [msg.entry], true);
        break;
      case "error":
        showBanner("warn", "The listener answered: " + (msg.code || "error") + ": " + (msg.message || ""));
        clearTimeout(conn.warnTimer);
        conn.warnTimer = setTimeout(() => {
          if (ui.banner.dataset.kind === "warn") hideBanner();
        }, WARN_MS);
        break;
      case "subscribed":
        if (Array.isArray(msg.task_ids) && msg.task_ids.includes("*")) onSubscribedAll();
        break;
      default:
        break; // pong, …
    }
  }

  /** The listener sends every task it holds right after "subscribed"; an open task it did not send (after a
   * restart of the listener, say) is marked as no longer reported instead of looking alive. */
  function onSubscribedAll() {
    conn.epoch += 1;
    const epoch = conn.epoch;
    clearTimeout(conn.staleTimer);
    conn.staleTimer = setTimeout(() => {
      for (const t of tasks.values()) {
        const stale = t.epoch !== epoch && !TERMINAL.has(t.data.status);
        if (stale !== t.stale) {
          t.stale = stale;
          dirty.add(t.id);
        }
      }
      queueRender();
    }, STALE_AFTER_MS);
  }

  function onProgress(msg) {
    const data = msg.data;
    const id = typeof data.task_id === "string" ? data.task_id : msg.task_id;
    if (typeof id !== "string") return;
    const now = Date.now();
    let t = tasks.get(id);
    if (!t) {
      t = {
        id: id,
        data: data,
        seq: null,
        receivedAt: now,
        firstSeen: now,
        arrival: ++arrivals,
        res: {},
        sampledAt: 0,
        etaTarget: null,
        etaErrors: [],
        etaPredictions: [],
        logs: [],
        logKeys: new Set(),
        logsFetched: false,
        els: null,
        batchId: null,
      };
      for (const r of RESOURCES) t.res[r.key] = [];
      tasks.set(id, t);
    }
    const wasTerminal = TERMINAL.has(t.data.status);
    // The selected task's log lines written while the page was away are fetched again after a reconnect.
    const refetchLogs = id === selected && t.epoch !== undefined && t.epoch !== conn.epoch;
    t.epoch = conn.epoch;
    t.stale = false;
    t.data = data;
    t.seq = typeof msg.seq === "number" ? msg.seq : data.seq;
    t.receivedAt = now;

    const updated = parseTime(data.updated_at);
    if (data.status === "executing" && updated !== null) {
      const offset = now - updated;
      if (clockOffset === null || offset < clockOffset) clockOffset = offset;
    }

    // ETA: a countdown target on the browser's clock, and the predicted completion kept for the ETA error.
    const etaSeconds = num(data.eta_seconds);
    const etaAt = parseTime(data.eta);
    if (!TERMINAL.has(data.status) && (etaSeconds !== null || etaAt !== null)) {
      // eta_seconds counts from updated_at (the server's clock), not from this message's arrival: a state that
      // was already a few seconds old when it came (on subscribe, after a reconnect) has that much less to go.
      const base = updated !== null && clockOffset !== null ? updated + clockOffset : now;
      t.etaTarget = etaSeconds !== null ? base + etaSeconds * 1000 : etaAt + (clockOffset || 0);
      const predicted = etaAt !== null ? etaAt : serverNow() + etaSeconds * 1000;
      if (data.status === "executing") t.etaPredictions.push(predicted);
      if (t.etaPredictions.length > 500) t.etaPredictions.splice(0, t.etaPredictions.length - 500);
    } else {
      t.etaTarget = null;
    }
    if (!wasTerminal && data.status === "completed") {
      const done = parseTime(data.completed_at);
      if (done !== null) t.etaErrors = t.etaPredictions.map((p) => Math.abs(p - done) / 1000);
    }

    const usage = data.resource_usage && typeof data.resource_usage === "object" ? data.resource_usage : null;
    if (usage && data.status === "executing") {
      // One point per SAMPLE_MS at most (updates come much faster than the figures change); within that
      // window the latest figure replaces the point.
      const fresh = now - t.sampledAt >= SAMPLE_MS;
      if (fresh) t.sampledAt = now;
      for (const r of RESOURCES) {
        const series = t.res[r.key];
        if (fresh || series.length === 0) series.push(num(usage[r.key]));
        else series[series.length - 1] = num(usage[r.key]);
        if (series.length > SPARK_POINTS) series.splice(0, series.length - SPARK_POINTS);
      }
    }

    if (msg.recovered !== undefined) conn.caughtUp += 1;
    if (msg.recovered !== undefined && ui.conn.dataset.state === "live" && conn.reconnects > 0 && conn.noticeTimer) {
      setConn(
        "live",
        "Reconnected — caught up " + conn.caughtUp + " task" + (conn.caughtUp === 1 ? "" : "s") +
          (conn.replayed ? " (" + conn.replayed + " missed events replayed)" : "")
      );
    }

    dirty.add(id);
    analyticsDirty = true;
    evictFinished();
    queueRender();
    if (refetchLogs) fetchLogs(t);
  }

  function logKey(e) {
    return e.timestamp + "|" + e.level + "|" + e.stage + "|" + e.message;
  }

  function onLog(id, entries, live) {
    let t = tasks.get(id);
    if (!t) {
      // A log line for a task not drawn yet: keep it until its state arrives.
      t = pendingLogs.get(id) || { logs: [], logKeys: new Set() };
      pendingLogs.set(id, t);
      if (pendingLogs.size > 500) pendingLogs.delete(pendingLogs.keys().next().value);
    }
    let added = false;
    for (const e of entries) {
      if (!e || typeof e !== "object") continue;
      const key = logKey(e);
      if (t.logKeys.has(key)) continue;
      t.logKeys.add(key);
      t.logs.push(e);
      added = true;
    }
    if (!added) return;
    if (!live) t.logs.sort((a, b) => (parseTime(a.timestamp) || 0) - (parseTime(b.timestamp) || 0));
    if (t.logs.length > MAX_LOGS) {
      for (const e of t.logs.splice(0, t.logs.length - MAX_LOGS)) t.logKeys.delete(logKey(e));
    }
    if (id === selected) renderLog();
  }

  const pendingLogs = new Map();

  function adoptPendingLogs(t) {
    const p = pendingLogs.get(t.id);
    if (!p) return;
    pendingLogs.delete(t.id);
    for (const e of p.logs) {
      const key = logKey(e);
      if (!t.logKeys.has(key)) {
        t.logKeys.add(key);
        t.logs.push(e);
      }
    }
  }

  function evictFinished() {
    const finished = [];
    for (const t of tasks.values()) if (TERMINAL.has(t.data.status)) finished.push(t);
    if (finished.length <= MAX_FINISHED) return;
    finished.sort((a, b) => (parseTime(a.data.completed_at) || a.receivedAt) - (parseTime(b.data.completed_at) || b.receivedAt));
    for (const t of finished.slice(0, finished.length - MAX_FINISHED)) {
      if (t.id === selected) continue;
      tasks.delete(t.id);
      dirty.delete(t.id);
      if (t.els) t.els.root.remove();
      if (t.batchId) updateBatchMembership(t.batchId);
    }
  }

  // ---------------------------------------------------------------- rendering

  function queueRender() {
    if (renderQueued) return;
    renderQueued = true;
    // requestAnimationFrame pauses in hidden tabs; the timeout keeps the page current there too.
    const run = () => {
      if (!renderQueued) return;
      renderQueued = false;
      render();
    };
    requestAnimationFrame(run);
    setTimeout(run, 250);
  }

  function render() {
    const batchesTouched = new Set();
    let structureChanged = false;
    for (const id of dirty) {
      const t = tasks.get(id);
      if (!t) continue;
      if (!t.els) {
        t.els = buildCard(t);
        adoptPendingLogs(t);
      }
      if (placeCard(t, batchesTouched)) structureChanged = true;
      updateCard(t);
      if (t.batchId) batchesTouched.add(t.batchId);
      if (id === selected) renderDetail();
    }
    dirty.clear();
    for (const b of batchesTouched) updateBatch(b);
    if (structureChanged) orderTopLevel();
    ui.empty.hidden = tasks.size > 0;
    if (analyticsDirty) renderAnalytics();
  }

  function buildCard(t) {
    const root = el("article", "task");
    root.tabIndex = 0;
    root.dataset.taskId = t.id;
    root.setAttribute("aria-current", "false");

    const head = el("div", "task-head");
    const title = el("h3", "task-id", t.id);
    const badge = el("span", "badge");
    head.append(title, badge);

    const template = el("p", "task-template");

    const bar = el("div", "bar");
    bar.setAttribute("role", "progressbar");
    bar.setAttribute("aria-valuemin", "0");
    bar.setAttribute("aria-valuemax", "100");
    bar.setAttribute("aria-label", "Overall progress of " + t.id);

    const line = el("p", "task-line");
    const pct = el("span", "pct");
    const stage = el("span", "stage");
    const msg = el("span", "msg");
    line.append(pct, stage, msg);

    const error = el("p", "error task-error");
    error.hidden = true;
    const stale = el("p", "stale-note", "No longer reported by the listener since the page reconnected: this is its last known state.");
    stale.hidden = true;

    const meta = el("p", "task-meta");
    const eta = el("span", "eta");
    const elapsed = el("span", "elapsed");
    meta.append(eta, elapsed);

    const sparks = el("div", "sparks");
    const sparkEls = {};
    for (const r of RESOURCES) {
      const box = el("div", "spark");
      box.dataset.resource = r.key;
      const label = el("span", "spark-label", r.label);
      const chart = svg("svg", { viewBox: "0 0 60 16", width: 60, height: 16, "aria-hidden": "true", focusable: "false" });
      const line = svg("polyline", { points: "", fill: "none" });
      chart.appendChild(line);
      const value = el("span", "spark-value", "—");
      box.append(label, chart, value);
      sparks.appendChild(box);
      sparkEls[r.key] = { box: box, line: line, value: value };
    }

    const body = el("div", "task-body");
    body.append(head, template, bar, line, error, stale, meta, sparks);

    const thumb = el("button", "thumb");
    thumb.type = "button";
    thumb.hidden = true;
    const img = el("img");
    img.alt = "Preview of " + t.id;
    img.decoding = "async";
    thumb.appendChild(img);
    thumb.setAttribute("aria-label", "Open the preview of " + t.id + " full size");
    thumb.addEventListener("click", (event) => {
      event.stopPropagation();
      openPreview(t, thumb);
    });
    thumb.addEventListener("keydown", (event) => event.stopPropagation());

    root.append(body, thumb);
    root.addEventListener("click", () => select(t.id, true));
    root.addEventListener("keydown", (event) => {
      if (event.target !== root) return;
      if (event.key === "Enter" || event.key === " ") {
        event.preventDefault();
        select(t.id, true);
      }
    });
    return {
      root, badge, template, bar, segs: [], pct, stage, msg, error, stale, eta, elapsed, sparkEls, thumb, img,
      stageKey: "",
    };
  }

  function updateCard(t) {
    const d = t.data;
    const e = t.els;
    const status = STATUSES.includes(d.status) ? d.status : "queued";
    e.root.dataset.status = status;
    e.badge.dataset.status = status;
    setText(e.badge, status);
    const parts = [d.template_id || "?"];
    if (d.template_category) parts.push(d.template_category);
    if (d.quality) parts.push(d.quality);
    setText(e.template, parts.join(" · "));

    const overall = Math.max(0, Math.min(100, num(d.overall_progress) || 0));
    e.root.dataset.progress = String(overall);
    e.bar.setAttribute("aria-valuenow", String(Math.round(overall * 10) / 10));
    setText(e.pct, formatPercent(overall));

    // Stage segments: widths in proportion to the weights, each filled with its own progress.
    const stages = stageList(d);
    const key = stages.map((s) => s.name + ":" + s.weight).join("|");
    if (key !== e.stageKey) {
      e.stageKey = key;
      e.bar.textContent = "";
      e.segs = stages.map((s) => {
        const seg = el("div", "seg");
        const fill = el("div", "seg-fill");
        seg.appendChild(fill);
        e.bar.appendChild(seg);
        return { seg, fill };
      });
    }
    const totalWeight = stages.reduce((sum, s) => sum + (num(s.weight) || 0), 0) || 1;
    stages.forEach((s, i) => {
      const { seg, fill } = e.segs[i];
      const weight = (num(s.weight) || 0) / totalWeight;
      const progress = s.status === "completed" ? 1 : Math.max(0, Math.min(1, num(s.progress) || 0));
      seg.dataset.stage = String(s.index);
      seg.dataset.weight = String(weight);
      seg.dataset.status = s.status || "pending";
      seg.style.width = (weight * 100).toFixed(4) + "%";
      fill.style.width = (progress * 100).toFixed(2) + "%";
      seg.title = (s.name || "stage " + s.index) + " — " + Math.round(weight * 100) + " % of the task, " +
        (s.status || "pending") + (s.status === "in_progress" ? " " + Math.round(progress * 100) + " %" : "");
    });

    const current = stages.find((s) => s.index === d.current_stage);
    const total = num(d.total_stages) || stages.length;
    setText(e.stage, current ? (current.name || "stage") + " (" + (current.index + 1) + "/" + total + ")" : "");
    setText(e.msg, current && current.message ? current.message : current && current.description ? current.description : "");

    e.stale.hidden = !t.stale;
    if (t.stale) e.root.dataset.stale = "true";
    else delete e.root.dataset.stale;
    const failed = status === "failed" || status === "cancelled";
    e.error.hidden = !(failed && d.error);
    setText(e.error, failed && d.error ? (status === "failed" ? "Error: " : "Cancelled: ") + d.error : "");

    // Preview: the latest PNG, through the token when the page has one (the preview route needs it).
    if (typeof d.preview_url === "string" && d.preview_url) {
      const src = d.preview_url + (d.preview_url.includes("?") ? tokenQuery.replace("?", "&") : tokenQuery);
      if (e.img.getAttribute("src") !== src) e.img.src = src;
      e.thumb.hidden = false;
      e.root.dataset.preview = "true";
    } else {
      e.thumb.hidden = true;
      delete e.root.dataset.preview;
    }

    for (const r of RESOURCES) updateSpark(t, r);
    updateClocks(t);
  }

  function updateSpark(t, r) {
    const { box, line, value } = t.els.sparkEls[r.key];
    const series = t.res[r.key];
    const usage = t.data.resource_usage || {};
    const current = num(usage[r.key]);
    setText(value, formatResource(r, current));
    const peak = t.data.resource_peaks ? num(t.data.resource_peaks[r.key]) : null;
    box.title = r.label + ": " + formatResource(r, current) + (peak !== null ? ", peak " + formatResource(r, peak) : "");
    const known = series.filter((v) => v !== null);
    box.dataset.empty = known.length === 0 ? "true" : "false";
    if (known.length === 0) {
      line.setAttribute("points", "");
      return;
    }
    let max = Math.max.apply(null, known);
    max = r.percent ? Math.max(100, max) : max * 1.15 || 1;
    const step = 60 / Math.max(1, SPARK_POINTS - 1);
    const start = SPARK_POINTS - series.length;
    const points = [];
    series.forEach((v, i) => {
      if (v === null) return;
      const x = (start + i) * step;
      const y = 15 - (Math.max(0, v) / max) * 14;
      points.push(x.toFixed(1) + "," + y.toFixed(1));
    });
    if (points.length === 1) {
      const y = points[0].split(",")[1];
      points.splice(0, 1, "0," + y, "60," + y); // one sample so far: a level line
    }
    line.setAttribute("points", points.join(" "));
    box.dataset.points = String(points.length);
  }

  function updateClocks(t) {
    const d = t.data;
    const e = t.els;
    if (!e) return;
    const terminal = TERMINAL.has(d.status);
    if (t.stale) {
      setText(e.eta, "ETA —");
      e.eta.dataset.eta = "none";
      setText(e.elapsed, "");
      return;
    }
    if (terminal) {
      setText(e.eta, d.status === "completed" ? "Done" : "ETA —");
      e.eta.dataset.eta = "none";
    } else if (t.etaTarget !== null) {
      const remaining = (t.etaTarget - Date.now()) / 1000;
      const confidence = num(d.eta_confidence);
      setText(
        e.eta,
        "ETA " + (remaining > 0 ? formatDuration(remaining) : "any moment") +
          (confidence !== null ? " (" + Math.round(confidence * 100) + " % confidence)" : "")
      );
      e.eta.dataset.eta = "countdown";
    } else {
      setText(e.eta, "ETA —");
      e.eta.dataset.eta = "none";
    }
    const started = parseTime(d.started_at) || parseTime(d.created_at);
    if (started === null) {
      setText(e.elapsed, "");
      return;
    }
    const end = terminal ? parseTime(d.completed_at) || parseTime(d.updated_at) : serverNow();
    setText(e.elapsed, "elapsed " + formatDuration((end - started) / 1000));
  }

  // Batches and order --------------------------------------------------------------------------------

  /** Puts a new card (or one whose batch changed) in its place. Returns whether the page's structure changed. */
  function placeCard(t, batchesTouched) {
    const batchId = typeof t.data.batch_id === "string" && t.data.batch_id ? t.data.batch_id : null;
    if (batchId === t.batchId && t.els.root.parentNode) return false;
    const old = t.batchId;
    t.batchId = batchId;
    if (old && old !== batchId) {
      batchesTouched.add(old);
      updateBatchMembership(old);
    }
    if (batchId) {
      const b = batchGroup(batchId);
      b.ids.add(t.id);
      insertSorted(b.tasksEl, t.els.root, taskOrderKey(t), false);
      batchesTouched.add(batchId);
    } else {
      insertSorted(ui.list, t.els.root, taskOrderKey(t), true);
    }
    return true;
  }

  /** Creation time, then order of arrival (tasks created in the same millisecond). */
  function taskOrderKey(t) {
    return [parseTime(t.data.created_at) || t.firstSeen, t.arrival];
  }

  function compareKeys(a, b) {
    return a[0] - b[0] || a[1] - b[1];
  }

  /** Inserts node among its siblings ordered by key (ascending or descending), moving nothing else. */
  function insertSorted(parent, node, key, descending) {
    node.orderKey = key;
    let before = null;
    for (const child of parent.children) {
      if (child === node || !child.orderKey) continue;
      const c = compareKeys(child.orderKey, key);
      if (descending ? c < 0 : c > 0) {
        before = child;
        break;
      }
    }
    if (node.parentNode === parent && node.nextElementSibling === before) return;
    parent.insertBefore(node, before);
  }

  function batchGroup(id) {
    let b = batches.get(id);
    if (b) return b;
    const root = el("section", "batch");
    root.dataset.batchId = id;
    const head = el("div", "batch-head");
    const title = el("h3", "batch-title");
    title.append(el("span", "batch-label", "Batch "), el("span", "batch-id", id));
    const counts = el("span", "batch-counts");
    head.append(title, counts);
    const barRow = el("div", "batch-bar-row");
    const bar = el("div", "batch-bar");
    bar.setAttribute("role", "progressbar");
    bar.setAttribute("aria-valuemin", "0");
    bar.setAttribute("aria-valuemax", "100");
    bar.setAttribute("aria-label", "Overall progress of batch " + id);
    const fill = el("div", "batch-fill");
    bar.appendChild(fill);
    const pct = el("span", "batch-pct");
    barRow.append(bar, pct);
    const tasksEl = el("div", "batch-tasks");
    root.append(head, barRow, tasksEl);
    b = { id, root, counts, bar, fill, pct, tasksEl, ids: new Set() };
    batches.set(id, b);
    return b;
  }

  function updateBatchMembership(id) {
    const b = batches.get(id);
    if (!b) return;
    for (const taskId of Array.from(b.ids)) {
      const t = tasks.get(taskId);
      if (!t || t.batchId !== id) b.ids.delete(taskId);
    }
    if (b.ids.size === 0) {
      b.root.remove();
      batches.delete(id);
    } else {
      updateBatch(id);
    }
  }

  function updateBatch(id) {
    const b = batches.get(id);
    if (!b) return;
    const members = Array.from(b.ids).map((x) => tasks.get(x)).filter(Boolean);
    if (members.length === 0) return;
    const mean = members.reduce((s, t) => s + (num(t.data.overall_progress) || 0), 0) / members.length;
    b.root.dataset.progress = String(mean);
    b.fill.style.width = Math.max(0, Math.min(100, mean)).toFixed(2) + "%";
    b.bar.setAttribute("aria-valuenow", String(Math.round(mean * 10) / 10));
    setText(b.pct, formatPercent(mean));
    const counts = {};
    for (const t of members) counts[t.data.status] = (counts[t.data.status] || 0) + 1;
    const parts = [members.length + " task" + (members.length === 1 ? "" : "s")];
    for (const s of STATUSES) if (counts[s]) parts.push(counts[s] + " " + s);
    setText(b.counts, parts.join(" · "));
    const failed = counts.failed || 0;
    b.root.dataset.status = failed ? "failed" : members.every((t) => t.data.status === "completed") ? "completed" : "active";
  }

  /** Top level: unbatched tasks and batch groups, newest first (a batch placed by its first task). */
  function orderTopLevel() {
    for (const b of batches.values()) {
      let first = null;
      for (const x of b.ids) {
        const t = tasks.get(x);
        if (t && (first === null || compareKeys(taskOrderKey(t), first) < 0)) first = taskOrderKey(t);
      }
      if (first === null) continue;
      insertSorted(ui.list, b.root, first, true);
    }
    for (const t of tasks.values()) {
      if (!t.batchId && t.els) insertSorted(ui.list, t.els.root, taskOrderKey(t), true);
    }
  }

  // Analytics ---------------------------------------------------------------------------------------

  let templatesSignature = "";

  function renderAnalytics() {
    analyticsDirty = false;
    const counts = {};
    for (const s of STATUSES) counts[s] = 0;
    const perTemplate = new Map();
    for (const t of tasks.values()) {
      const d = t.data;
      if (counts[d.status] !== undefined) counts[d.status] += 1;
      if (d.status !== "completed") continue;
      const started = parseTime(d.started_at) || parseTime(d.created_at);
      const done = parseTime(d.completed_at);
      const key = d.template_id || "?";
      let row = perTemplate.get(key);
      if (!row) {
        row = { n: 0, durations: [], etaErrors: [] };
        perTemplate.set(key, row);
      }
      row.n += 1;
      if (started !== null && done !== null) row.durations.push((done - started) / 1000);
      if (t.etaErrors.length) row.etaErrors.push(t.etaErrors.reduce((a, b) => a + b, 0) / t.etaErrors.length);
    }

    if (ui.counts.children.length === 0) {
      const total = el("li", "count");
      total.dataset.status = "total";
      total.append(el("span", "count-label", "tasks"), el("span", "count-value", "0"));
      ui.counts.appendChild(total);
      for (const s of STATUSES) {
        const li = el("li", "count");
        li.dataset.status = s;
        li.append(el("span", "count-label", s), el("span", "count-value", "0"));
        ui.counts.appendChild(li);
      }
    }
    for (const li of ui.counts.children) {
      const s = li.dataset.status;
      const value = s === "total" ? tasks.size : counts[s];
      setText(li.querySelector(".count-value"), value);
      li.dataset.count = String(value);
    }

    const mean = (xs) => (xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : null);
    const rows = Array.from(perTemplate.entries()).sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
    const cells = rows.map(([template, row]) => {
      const etaError = mean(row.etaErrors);
      return [template, String(row.n), formatDuration(mean(row.durations)), etaError === null ? "—" : "± " + formatDuration(etaError)];
    });
    const signature = JSON.stringify(cells);
    if (signature !== templatesSignature) {
      // Redrawn only when a figure changes, so reading (or selecting text in) the table is not disturbed.
      templatesSignature = signature;
      ui.templatesBody.textContent = "";
      for (const [template, n, duration, etaError] of cells) {
        const tr = el("tr");
        tr.dataset.template = template;
        const th = el("th", null, template);
        th.scope = "row";
        tr.append(th, el("td", "n", n), el("td", "duration", duration), el("td", "eta-error", etaError));
        ui.templatesBody.appendChild(tr);
      }
    }
    ui.templates.hidden = rows.length === 0;
  }

  // Selection, detail panel and log -------------------------------------------------------------------

  function select(id, user) {
    if (selected && tasks.get(selected) && tasks.get(selected).els) {
      tasks.get(selected).els.root.setAttribute("aria-current", "false");
    }
    selected = id;
    const t = tasks.get(id);
    if (!t) return;
    t.els.root.setAttribute("aria-current", "true");
    ui.detail.dataset.taskId = id;
    ui.log.textContent = "";
    renderedLogs = 0;
    renderDetail();
    renderLog();
    if (!t.stale) fetchLogs(t); // a task the listener no longer has: its log is what the page kept
    if (user && window.matchMedia("(max-width: 800px)").matches) {
      ui.detail.scrollIntoView({ block: "start", behavior: "smooth" });
    }
  }

  function fetchLogs(t) {
    const id = t.id;
    fetch(API + "/tasks/" + encodeURIComponent(id) + "/logs" + tokenQuery, { cache: "no-store" })
      .then((r) => (r.ok ? r.json() : null))
      .then((body) => {
        if (!body || !Array.isArray(body.logs)) return;
        const current = tasks.get(id);
        if (!current) return;
        t.logsFetched = true;
        onLog(id, body.logs, false);
        if (id === selected) {
          ui.log.textContent = "";
          renderedLogs = 0;
          renderLog();
        }
      })
      .catch(() => {
        // Offline for a moment: the live log lines still arrive over the WebSocket.
      });
  }

  function renderDetail() {
    const t = tasks.get(selected);
    if (!t) return;
    const d = t.data;
    ui.detailHint.hidden = true;
    ui.detailBody.hidden = false;
    setText(ui.detailTitle, "Log — " + t.id);
    const failed = d.status === "failed" || d.status === "cancelled";
    ui.detailError.hidden = !(failed && d.error);
    setText(ui.detailError, failed && d.error ? "Error: " + d.error : "");
    ui.detailStages.textContent = "";
    for (const s of stageList(d)) {
      const tr = el("tr");
      tr.dataset.status = s.status || "pending";
      const th = el("th", null, s.name || "stage " + s.index);
      th.scope = "row";
      if (s.description) th.title = s.description;
      const progress = s.status === "completed" ? 1 : num(s.progress) || 0;
      const status = s.status || "pending";
      tr.append(
        th,
        el("td", null, Math.round((num(s.weight) || 0) * 100) + " %"),
        el("td", "stage-status", status === "in_progress" ? "in progress " + Math.round(progress * 100) + "\u00a0%" : status),
        el("td", null, num(s.duration) !== null ? formatDuration(s.duration) : "")
      );
      ui.detailStages.appendChild(tr);
    }
  }

  let renderedLogs = 0;

  function renderLog() {
    const t = tasks.get(selected);
    if (!t) return;
    const atBottom = renderedLogs === 0 || ui.log.scrollHeight - ui.log.scrollTop - ui.log.clientHeight < 24;
    if (renderedLogs > t.logs.length || ui.log.children.length !== renderedLogs) {
      ui.log.textContent = "";
      renderedLogs = 0;
    }
    // Entries are appended in order; a trimmed or re-sorted buffer is redrawn whole.
    const first = ui.log.firstElementChild;
    if (first && t.logs.length && first.dataset.key !== logKey(t.logs[0])) {
      ui.log.textContent = "";
      renderedLogs = 0;
    }
    for (let i = renderedLogs; i < t.logs.length; i++) {
      const e = t.logs[i];
      const li = el("li", "log-entry");
      li.dataset.key = logKey(e);
      li.dataset.level = String(e.level || "info");
      const stages = stageList(t.data);
      const stage = stages.find((s) => s.index === e.stage);
      li.append(
        el("time", "log-time", formatClock(e.timestamp)),
        el("span", "log-level", String(e.level || "")),
        el("span", "log-stage", stage ? stage.name : e.stage !== undefined ? "#" + e.stage : ""),
        el("span", "log-msg", e.message)
      );
      if (e.timestamp) li.firstChild.dateTime = String(e.timestamp);
      ui.log.appendChild(li);
    }
    renderedLogs = t.logs.length;
    if (atBottom) ui.log.scrollTop = ui.log.scrollHeight;
    ui.log.dataset.count = String(t.logs.length);
  }

  // Preview dialog -------------------------------------------------------------------------------------

  function openPreview(t, opener) {
    const src = t.els.img.getAttribute("src");
    if (!src) return;
    dialogOpener = opener;
    setText(ui.dialogTitle, "Preview — " + t.id);
    ui.dialogImg.alt = "Latest preview of " + t.id;
    ui.dialogImg.src = src;
    if (typeof ui.dialog.showModal === "function") ui.dialog.showModal();
    else ui.dialog.setAttribute("open", "");
    ui.dialogClose.focus();
  }

  function closePreview() {
    if (ui.dialog.open) ui.dialog.close();
  }

  ui.dialogClose.addEventListener("click", closePreview);
  ui.dialog.addEventListener("click", (event) => {
    if (event.target === ui.dialog) closePreview(); // a click on the backdrop
  });
  ui.dialog.addEventListener("close", () => {
    if (dialogOpener && document.contains(dialogOpener)) dialogOpener.focus();
    dialogOpener = null;
  });

  // ---------------------------------------------------------------- clocks and start

  setInterval(() => {
    for (const t of tasks.values()) if (t.els && !TERMINAL.has(t.data.status)) updateClocks(t);
  }, 1000);

  renderAnalytics();

  // For tests and debugging from the console: feed a server message as if it came over the WebSocket, drop
  // the connection as a network failure would (the page reconnects and resumes), read the connection's state.
  window.progressDashboard = Object.freeze({
    ingest: (msg) => {
      handleMessage(msg);
      render();
    },
    drop: (holdMs) => {
      conn.holdUntil = Date.now() + (holdMs || 0);
      if (conn.ws) conn.ws.close(4000, "dropped from the console");
    },
    get connection() {
      return { state: ui.conn.dataset.state, reconnects: conn.reconnects, attempt: conn.attempt };
    },
    get taskCount() {
      return tasks.size;
    },
  });

  connect();
})();
