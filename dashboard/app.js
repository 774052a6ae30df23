// ProgressEngine live dashboard (SPEC §8): one JavaScript client (clients/js) subscribed to "*"; cards for a handful
// of tasks, a virtualised table for a fleet, and a page per task (#/task/<id>) drawn from its history
// (docs/DASHBOARD.md). An ES module with no framework and no external assets; scripts/embed-dashboard.py points its
// import at the client's content-hashed URL. Everything that comes from the server (task ids, messages, errors, log
// lines) reaches the page through textContent or attributes, never as markup.
import { ProgressClient, ProgressError } from "/dashboard/progress-client.js";

(function () {
  const API = "/api/v1/progress";
  const BACKOFF_MAX_MS = 5000;
  const RECONNECTED_NOTICE_MS = 10000;
  const MAX_FINISHED = 300; // finished tasks kept on the page; the oldest beyond that are dropped
  const MAX_LOGS = 300; // log entries kept per task
  const TASK_PAGE_LOGS = 1000; // log entries on a task's page: as many as the engine keeps of a task
  const SPARK_POINTS = 60; // resource samples kept per task and resource
  const SAMPLE_MS = 250; // at most one sparkline point per this interval
  const WARN_MS = 10000;
  /** Close codes of the refusals other than 4401 (reconnecting cannot change them: the client stops), and why. */
  const REFUSED = {
    4403: "this page's origin is not in the listener's allowed_origins",
    4404: "the listener has no WebSocket at this path",
    1008: "the listener refused the client id",
  };
  const TERMINAL = new Set(["completed", "failed", "cancelled"]);
  const STATUSES = ["queued", "executing", "completed", "failed", "cancelled"];
  const SVG_NS = "http://www.w3.org/2000/svg";
  const VIEW_KEY = "progress-dashboard.view"; // the view a user picked, remembered per listener origin
  const AUTO_TABLE_ABOVE = 20; // without a picked view: cards up to this many tasks, the table beyond
  const OVERSCAN = 6; // rows drawn above and below the viewport, so a scroll shows no blank rows
  const RESORT_MS = 1000; // a sort by a live figure (ETA, updated, status) reorders at most this often
  const ANALYTICS_MS = 500; // with many tasks the analytics strip (a pass over every task) is redrawn this often
  const ETA_SAMPLE_MS = 1000; // at most one ETA prediction kept per task per this interval
  const ETA_POINTS = 600;
  const MAX_PREVIEWS = 24; // distinct previews kept per task for its page
  const HISTORY_POLL_MS = 1000; // an open task's page reads its new history events this often
  const UPDATE_INTERVAL_MS = 250; // the subscription's interval_ms (docs/API.md "Update interval")
  const PAGE_SIZE = 1000; // tasks per page: the listing's maximum (docs/API.md)
  const FILTER_TEXT_MS = 300; // typing in the id filter asks the listing again once it pauses this long
  const CANCEL_REASON = "cancelled from the dashboard";
  const STATUS_RANK = { failed: 0, executing: 1, queued: 2, cancelled: 3, completed: 4 };
  const RESOURCES = [
    { key: "cpu_percent", label: "CPU", unit: "%", percent: true },
    { key: "memory_mb", label: "Mem", unit: "MB", percent: false },
    { key: "gpu_percent", label: "GPU", unit: "%", percent: true },
  ];

  const LIST_TITLE = document.title;
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
    detailLink: $("detail-link"),
    viewBtns: Array.from(document.querySelectorAll(".view-btn")),
    sort: $("sort"),
    sortDir: $("sort-dir"),
    filterStatus: $("filter-status"),
    filterText: $("filter-text"),
    filterTemplate: $("filter-template"),
    pager: $("pager"),
    pageNewest: $("page-newest"),
    pageNewer: $("page-newer"),
    pageOlder: $("page-older"),
    pageLabel: $("page-label"),
    tvCancel: $("tv-cancel"),
    shown: $("shown"),
    vt: $("vt-viewport"),
    vtHead: $("vt-head"),
    vtSpacer: $("vt-spacer"),
    analytics: $("analytics"),
    layout: document.querySelector(".layout"),
    tv: $("task-view"),
    tvTitle: $("tv-title"),
    tvStatus: $("tv-status"),
    tvMeta: $("tv-meta"),
    tvSummary: $("tv-summary"),
    tvError: $("tv-error"),
    tvNote: $("tv-note"),
    tvTimeline: $("tv-timeline"),
    tvStages: $("tv-stages-body"),
    tvProgress: $("tv-progress"),
    tvRate: $("tv-rate"),
    tvEta: $("tv-eta"),
    tvRes: $("tv-res"),
    tvPreviews: $("tv-previews"),
    tvLog: $("tv-log"),
    tvBack: $("tv-back"),
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

  /** What the page shows of the connection; `epoch` counts the connections opened. */
  const conn = {
    attempt: 0,
    attemptTimer: null,
    noticeTimer: null,
    everConnected: false,
    reconnects: 0,
    epoch: 0,
    warnTimer: null,
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

  // The listener's protocol (subscribe, reconnect with jittered back-off, resume each task without gap or
  // duplicate, pings) is the JavaScript client's, clients/js/progress-client.js; the page says what it does.
  let client = null;

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

  /** A warning in the banner for WARN_MS (unless something else replaced it meanwhile). */
  function showWarning(text) {
    showBanner("warn", text);
    clearTimeout(conn.warnTimer);
    conn.warnTimer = setTimeout(() => {
      if (ui.banner.dataset.kind === "warn") hideBanner();
    }, WARN_MS);
  }

  function hideBanner() {
    ui.banner.hidden = true;
    setText(ui.banner, "");
  }

  function connect() {
    client = new ProgressClient({
      token: token || undefined,
      clientId: "dashboard-" + Math.random().toString(36).slice(2, 10),
      maxReconnectDelay: BACKOFF_MAX_MS,
      lazyData: true, // see deferUpdate
    });
    client.on("state", (state) => {
      // "connecting" is followed by a retry event, which says why and when; "closed" by an error, which says why.
      if (state === "open") onOpen();
    });
    client.on("retry", onRetry);
    client.on("error", onError);
    client.on("update", onUpdate);
    client.on("log", (msg) => onLog(msg.task_id, [msg.entry], true));
    client.on("resumed", onResumed);
    // Merge patches after the first full state (docs/API.md "Delta updates"); the client applies them. At most one
    // update of a task per UPDATE_INTERVAL_MS, its latest (stage changes and ends at once): what a person reads off
    // a bar or a countdown, at 4,000 messages a second for 1,000 tasks stepped at 10 Hz instead of 10,000.
    client.subscribe("*", { delta: true, intervalMs: UPDATE_INTERVAL_MS }).catch((error) => {
      // A refusal of the connection (closeCode), or the runtime's, was reported by the error event already.
      if (error instanceof ProgressError && error.closeCode === undefined) onError(error);
    });
  }

  function onOpen() {
    const wasReconnect = conn.everConnected;
    conn.everConnected = true;
    conn.attempt = 0;
    conn.epoch += 1;
    clearTimeout(conn.attemptTimer);
    clearTimeout(conn.noticeTimer);
    conn.noticeTimer = null;
    // The listing once the WebSocket has proved the token (a wrong one is said once, by the client); again after a
    // reconnect, for what changed while away (finished tasks of other runners included).
    loadPage(pager.page, { keepScroll: wasReconnect });
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
  }

  /** The connection was lost, or an attempt failed: why, and when the next attempt comes. */
  function onRetry(retry) {
    conn.attempt = retry.attempt;
    clearTimeout(conn.noticeTimer);
    conn.noticeTimer = null;
    let why = "connection lost";
    if (retry.code === 1013) why = "the listener has too many connections";
    else if (retry.code === 4008) why = "the page fell behind the updates";
    else if (retry.code === 1001) why = "the listener went away";
    else if (!conn.everConnected) why = "the listener is not reachable";
    why = capitalize(why + (retry.reason ? " (" + retry.reason + ")" : ""));
    const verb = conn.everConnected ? "reconnecting" : "connecting";
    setConn("reconnecting",
      why + " — " + verb + " in " + (retry.delay / 1000).toFixed(1) + " s (attempt " + retry.attempt + ")…");
    clearTimeout(conn.attemptTimer);
    conn.attemptTimer = setTimeout(() => {
      setConn("reconnecting", why + " — " + verb + "… (attempt " + retry.attempt + ")");
    }, retry.delay);
  }

  /** A refusal that reconnecting cannot change (the client stops), or a listener's error no request waited for. */
  /** A token typed into the address is read as a URL's query: its "+" would be a blank, its "&" the end. */
  const TOKEN_ENCODING = " (percent-encode the token if it has characters other than letters, digits and - . _ ~:" +
    " + is %2B, / is %2F, = is %3D)";

  function onError(error) {
    const code = error.closeCode;
    if (code === 4401) {
      setConn("unauthorized", token ? "Wrong token" : "Token required");
      showBanner(
        "error",
        token
          ? "The listener refused the token in this page's address (close code 4401: wrong token). " +
              "Open the dashboard again with the right one: " + location.origin + "/?token=YOUR_TOKEN" +
              TOKEN_ENCODING
          : "This listener requires a token (close code 4401). Open the dashboard with it in the address: " +
              location.origin + "/?token=YOUR_TOKEN" + TOKEN_ENCODING
      );
    } else if (code !== undefined || !(error instanceof ProgressError)) {
      setConn("unauthorized", "Refused");
      showBanner("error", (code !== undefined
        ? "The listener refused this page (close code " + code + ": " + REFUSED[code] + "; " + error.message + ")."
        : "The browser refused the WebSocket (" + error.message + ").") +
        " Reconnecting would not change that; fix the listener's configuration or the page's address, then reload.");
    } else {
      showWarning("The listener answered: " + error.code + ": " + error.message);
    }
  }

  /** After a reconnect, once the listener has sent everything: an open task it did not send again (it restarted
   *  without the task, say) is marked as no longer reported instead of looking alive. */
  function onResumed(resumed) {
    for (const id of resumed.gone) {
      const t = tasks.get(id);
      if (!t) continue;
      if (t.held) readDeferred(t);
      if (!TERMINAL.has(t.data.status) && !t.stale) {
        t.stale = true;
        dirty.add(id);
      }
    }
    queueRender();
    if (ui.conn.dataset.state === "live" && conn.noticeTimer && (resumed.tasks || resumed.replayed)) {
      setConn(
        "live",
        "Reconnected — caught up " + resumed.tasks + " task" + (resumed.tasks === 1 ? "" : "s") +
          (resumed.replayed ? " (" + resumed.replayed + " missed events replayed)" : "")
      );
    }
  }

  function capitalize(s) {
    return s ? s.charAt(0).toUpperCase() + s.slice(1) : s;
  }

  // ---------------------------------------------------------------- messages

  // A fleet's updates, read when they are needed. 1,000 tasks at 10 Hz are 10,000 messages a second: parsing each
  // and updating its task cost the page more than the table's drawing. The client delivers them unparsed
  // (lazyData: `data` is parsed when first read); in the table view the latest update of a task that is not drawn is
  // kept and read when its row comes into view, or within DEFER_MS (the counts, sort and analytics run late by that
  // much at most). Each update holds the task's whole state, so the latest is enough.
  const DEFER_MS = 1000;
  const FLUSH_BUDGET_MS = 4; // parsing of held updates per frame, so a 10,000-task backlog does not stall a frame
  /** Tasks holding an unread update, in the order they began to wait. */
  const deferred = new Set();

  function onUpdate(msg) {
    if (msg.replayed) return; // a missed event (counted in the resumed event): the task's current state follows
    if (deferUpdate(msg)) return;
    if (msg.data && typeof msg.data === "object") onProgress(msg);
  }

  /** Keeps an update of a task that is not drawn; false when it must be read now. */
  function deferUpdate(msg) {
    if (shownView !== "table") return false;
    const id = msg.task_id;
    const t = tasks.get(id);
    // The first update after a reconnect is read at once: it may end a stale mark, and it refetches a log.
    if (!t || t.stale || t.epoch !== conn.epoch || id === taskView.id || table.drawn.has(id)) return false;
    if (t.held === null) {
      t.heldSince = Date.now();
      deferred.add(t);
    }
    t.held = msg;
    if (!flushTimer) flushTimer = setTimeout(flushTick, DEFER_MS);
    return true;
  }

  /** Reads the held update of a task now. */
  function readDeferred(t) {
    const msg = t.held;
    t.held = null;
    deferred.delete(t);
    if (tasks.get(t.id) === t && msg.data && typeof msg.data === "object") onProgress(msg);
  }

  /** The held updates that waited DEFER_MS (all of them when `all`), within the frame's budget unless `all`. */
  function flushDeferred(all) {
    if (deferred.size === 0) return;
    const start = Date.now();
    for (const t of deferred) {
      if (!all && (start - t.heldSince < DEFER_MS || Date.now() - start > FLUSH_BUDGET_MS)) break;
      readDeferred(t);
    }
    if (deferred.size && !flushTimer) flushTimer = setTimeout(flushTick, 250);
  }

  let flushTimer = null;

  function flushTick() {
    flushTimer = null;
    queueRender();
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
        receivedAt: now,
        firstSeen: now,
        arrival: ++arrivals,
        res: {},
        sampledAt: 0,
        etaTarget: null,
        etaErrors: [],
        etaSeen: [], // [server ms when predicted, predicted end in server ms] pairs, flat
        etaSampledAt: 0,
        resT: [], // server ms of each resource sample in res
        previews: [], // {url, at, overall}: each distinct preview seen, in order
        createdMs: 0,
        updatedMs: 0,
        held: null, // an update held unread (deferUpdate)
        heldSince: 0,
        logs: [],
        logKeys: new LogKeys(),
        logsFetched: false,
        els: null,
        batchId: null,
      };
      for (const r of RESOURCES) t.res[r.key] = [];
      tasks.set(id, t);
      table.structureDirty = true;
      noteTemplate(data.template_id);
    }
    const wasTerminal = TERMINAL.has(t.data.status);
    // The selected task's log lines written while the page was away are fetched again after a reconnect.
    const refetchLogs = id === selected && t.epoch !== undefined && t.epoch !== conn.epoch;
    t.epoch = conn.epoch;
    t.stale = false;
    t.data = data;
    t.receivedAt = now;

    const updated = parseTime(data.updated_at);
    t.updatedMs = updated !== null ? updated : now;
    t.createdMs = parseTime(data.created_at) || t.firstSeen;
    if (table.liveSort) table.orderStale = true;
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
      const at = updated !== null ? updated : serverNow();
      const predicted = etaAt !== null ? etaAt : at + etaSeconds * 1000;
      // Updates come at up to 10 Hz; one prediction a second draws the same picture at a tenth of the memory.
      if (data.status === "executing" && now - t.etaSampledAt >= ETA_SAMPLE_MS) {
        t.etaSampledAt = now;
        t.etaSeen.push(at, predicted);
        if (t.etaSeen.length > 2 * ETA_POINTS) t.etaSeen.splice(0, t.etaSeen.length - 2 * ETA_POINTS);
      }
    } else {
      t.etaTarget = null;
    }
    if (!wasTerminal && data.status === "completed") {
      const done = parseTime(data.completed_at);
      if (done !== null) {
        t.etaErrors = [];
        for (let i = 1; i < t.etaSeen.length; i += 2) t.etaErrors.push(Math.abs(t.etaSeen[i] - done) / 1000);
      }
    }
    if (typeof data.preview_url === "string" && data.preview_url) {
      const last = t.previews[t.previews.length - 1];
      if (!last || last.url !== data.preview_url) {
        t.previews.push({ url: data.preview_url, at: t.updatedMs, overall: num(data.overall_progress) });
        if (t.previews.length > MAX_PREVIEWS) t.previews.shift();
      }
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
      if (fresh || t.resT.length === 0) t.resT.push(t.updatedMs);
      else t.resT[t.resT.length - 1] = t.updatedMs;
      if (t.resT.length > SPARK_POINTS) t.resT.splice(0, t.resT.length - SPARK_POINTS);
    }

    dirty.add(id);
    analyticsDirty = true;
    // Only a task that just finished can push the finished ones over the bound: a pass over every task on every
    // update would cost O(tasks) per message (10,000 tasks at 10 Hz: 10^9 visits a second).
    if (TERMINAL.has(data.status) && !wasTerminal) evictFinished();
    queueRender();
    if (refetchLogs) fetchLogs(t);
  }

  function logKey(e) {
    return e.timestamp + "|" + e.level + "|" + e.stage + "|" + e.message;
  }

  /**
   * The log lines a list holds, by key, with how many of each: the same line written twice in one millisecond is
   * two lines, so a key alone cannot tell a repeat from a copy. Lines come live (each one new) and in lists read
   * back (over REST, or another list's), which repeat what came live: there the n-th copy of a line is new only if
   * fewer than n are held. (A line logged while a REST read is on its way can come in its reply and then live too:
   * it is shown twice, where telling copies by key alone hid every repeated line.)
   */
  class LogKeys {
    constructor() {
      this.counts = new Map();
    }

    /** The lines of `entries` that are new, counted in: all of them when `live`, else those read back. */
    take(entries, live = false) {
      const seen = new Map();
      const added = [];
      for (const e of entries) {
        if (!e || typeof e !== "object") continue;
        const key = logKey(e);
        const n = (seen.get(key) || 0) + 1;
        seen.set(key, n);
        const have = this.counts.get(key) || 0;
        if (!live && have >= n) continue;
        this.counts.set(key, have + 1);
        added.push(e);
      }
      return added;
    }

    drop(e) {
      const key = logKey(e);
      const n = this.counts.get(key) || 0;
      if (n > 1) this.counts.set(key, n - 1);
      else this.counts.delete(key);
    }
  }

  function onLog(id, entries, live) {
    let t = tasks.get(id);
    if (!t) {
      // A log line for a task not drawn yet: keep it until its state arrives.
      t = pendingLogs.get(id) || { logs: [], logKeys: new LogKeys() };
      pendingLogs.set(id, t);
      if (pendingLogs.size > 500) pendingLogs.delete(pendingLogs.keys().next().value);
    }
    const fresh = t.logKeys.take(entries, live);
    if (fresh.length === 0) return;
    t.logs.push(...fresh);
    // The task's page takes the lines as they come: between two of its renders more than MAX_LOGS may arrive.
    if (id === taskView.id && mergeTaskLogs(fresh, live)) {
      taskView.logDirty = true;
      queueRender();
    }
    if (!live) t.logs.sort((a, b) => (parseTime(a.timestamp) || 0) - (parseTime(b.timestamp) || 0));
    if (t.logs.length > MAX_LOGS) {
      for (const e of t.logs.splice(0, t.logs.length - MAX_LOGS)) t.logKeys.drop(e);
    }
    if (id === selected) renderLog();
  }

  const pendingLogs = new Map();

  function adoptPendingLogs(t) {
    const p = pendingLogs.get(t.id);
    if (!p) return;
    pendingLogs.delete(t.id);
    t.logs.push(...t.logKeys.take(p.logs));
  }

  function evictFinished() {
    if (pager.suspendEviction) return;
    const finished = [];
    // The tasks the listing gave for the page shown stay while it is shown: nothing else would bring them back.
    for (const t of tasks.values()) if (TERMINAL.has(t.data.status) && !pager.listed.has(t.id)) finished.push(t);
    if (finished.length <= MAX_FINISHED) return;
    finished.sort((a, b) => (parseTime(a.data.completed_at) || a.receivedAt) - (parseTime(b.data.completed_at) || b.receivedAt));
    for (const t of finished.slice(0, finished.length - MAX_FINISHED)) {
      if (t.id === selected || t.id === taskView.id) continue;
      tasks.delete(t.id);
      table.structureDirty = true;
      dirty.delete(t.id);
      if (t.els) t.els.root.remove();
      if (t.batchId) updateBatchMembership(t.batchId);
    }
  }

  // ---------------------------------------------------------------- rendering

  // A fleet's table is drawn at most this often for its updates: each task is updated at up to 10 Hz, so a faster
  // redraw shows nothing more, while every frame costs the page its style, layout, paint and compositing. Scrolling,
  // keys and clicks are drawn in the next frame.
  const TABLE_FRAME_MS = 100;
  let lastRender = 0;
  let renderDelay = null;

  function queueRender(urgent) {
    if (renderQueued) return;
    const wait = urgent || shownView !== "table" ? 0 : TABLE_FRAME_MS - (Date.now() - lastRender);
    if (wait > 0) {
      if (!renderDelay) renderDelay = setTimeout(() => { renderDelay = null; queueRender(true); }, wait);
      return;
    }
    renderQueued = true;
    // requestAnimationFrame pauses in hidden tabs; the timeout keeps the page current there too.
    const run = () => {
      if (!renderQueued) return;
      renderQueued = false;
      lastRender = Date.now();
      render();
    };
    requestAnimationFrame(run);
    setTimeout(run, 250);
  }

  function render(forceAnalytics) {
    const view = applyView();
    flushDeferred(view !== "table");
    if (view === "table") {
      for (const id of dirty) table.dirty.add(id);
      if (taskView.id !== null && dirty.has(taskView.id)) taskView.stateDirty = true;
      dirty.clear();
      renderTable();
    } else {
      renderCards();
      if (taskView.id !== null) renderTable(); // keeps its filter counts current for the way back
    }
    if (taskView.id !== null) renderTaskView();
    ui.empty.hidden = tasks.size > 0;
    if (analyticsDirty) {
      const wait = tasks.size > 200 && !forceAnalytics ? ANALYTICS_MS - (Date.now() - lastAnalytics) : 0;
      if (wait <= 0) renderAnalytics();
      else if (!analyticsTimer) analyticsTimer = setTimeout(() => { analyticsTimer = null; queueRender(); }, wait);
    }
  }

  let lastAnalytics = 0;
  let analyticsTimer = null;

  function renderCards() {
    const batchesTouched = new Set();
    let structureChanged = false;
    for (const id of dirty) {
      const t = tasks.get(id);
      if (!t) continue;
      if (id === taskView.id) taskView.stateDirty = true;
      if (!t.els) {
        t.els = buildCard(t);
        adoptPendingLogs(t);
      }
      if (placeCard(t, batchesTouched)) structureChanged = true;
      t.els.root.hidden = !shows(t);
      updateCard(t);
      if (t.batchId) batchesTouched.add(t.batchId);
      if (id === selected) renderDetail();
    }
    dirty.clear();
    for (const b of batchesTouched) updateBatch(b);
    if (structureChanged) orderTopLevel();
  }

  function buildCard(t) {
    const root = el("article", "task");
    root.tabIndex = 0;
    root.dataset.taskId = t.id;
    root.setAttribute("aria-current", "false");

    const head = el("div", "task-head");
    const title = el("h3", "task-id", t.id);
    const badge = el("span", "badge");
    const cancel = el("button", "cancel-btn", "Cancel");
    cancel.type = "button";
    cancel.hidden = true;
    cancel.setAttribute("aria-label", "Cancel " + t.id);
    cancel.addEventListener("click", (event) => {
      event.stopPropagation();
      requestCancel(t.id, cancel);
    });
    cancel.addEventListener("keydown", (event) => event.stopPropagation());
    head.append(title, badge, cancel);

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
      root, badge, cancel, template, bar, segs: [], pct, stage, msg, error, stale, eta, elapsed, sparkEls, thumb, img,
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
    updateCancelButton(e.cancel, d, "Cancel");
    if (d.cancel_requested === true) e.root.dataset.cancel = "requested";
    else delete e.root.dataset.cancel;
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
    // A filter that none of its tasks passes hides the group, not only its cards.
    b.root.hidden = !members.some(shows);
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
    lastAnalytics = Date.now();
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
    ui.detailLink.href = "#/task/" + encodeURIComponent(id);
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
    setText(ui.detailError, failed && d.error ? (d.status === "failed" ? "Error: " : "Cancelled: ") + d.error : "");
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

  /** Stage index -> name, for log entries. */
  function stageNames(d) {
    const names = {};
    for (const s of stageList(d || {})) names[s.index] = s.name;
    return names;
  }

  /** One log entry as a list item: the card's log and the task page's. */
  function logItem(e, names) {
    const li = el("li", "log-entry");
    li.dataset.level = String(e.level || "info");
    const time = el("time", "log-time", formatClock(e.timestamp));
    if (e.timestamp) time.dateTime = String(e.timestamp);
    li.append(time, el("span", "log-level", String(e.level || "")),
      el("span", "log-stage", names[e.stage] !== undefined ? names[e.stage] : e.stage !== undefined ? "#" + e.stage : ""),
      el("span", "log-msg", e.message));
    return li;
  }

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
    const names = stageNames(t.data);
    for (let i = renderedLogs; i < t.logs.length; i++) {
      const li = logItem(t.logs[i], names);
      li.dataset.key = logKey(t.logs[i]);
      ui.log.appendChild(li);
    }
    renderedLogs = t.logs.length;
    if (atBottom) ui.log.scrollTop = ui.log.scrollHeight;
    ui.log.dataset.count = String(t.logs.length);
  }

  // View: cards for a handful of tasks, a virtualised table for a fleet ---------------------------------

  function storedView() {
    try {
      const v = localStorage.getItem(VIEW_KEY);
      return v === "table" || v === "cards" ? v : null;
    } catch (e) {
      return null; // storage disabled: the automatic choice
    }
  }

  let pickedView = storedView();
  /** The view shown (document.body.dataset.view), kept in a variable: it is read for every message. */
  let shownView = null;

  /** Shows the view in effect (picked, else by the number of tasks) and returns it. */
  function applyView() {
    const view = pickedView || (tasks.size > AUTO_TABLE_ABOVE ? "table" : "cards");
    if (shownView === view) return view;
    shownView = view;
    document.body.dataset.view = view;
    for (const b of ui.viewBtns) b.setAttribute("aria-pressed", String(b.dataset.view === view));
    ui.vt.hidden = view !== "table";
    ui.list.hidden = view !== "cards";
    if (view === "table") {
      // The cards go: a thousand hidden cards still cost memory and nodes, and they are rebuilt on the way back.
      for (const t of tasks.values()) {
        t.els = null;
        t.batchId = null;
      }
      ui.list.textContent = "";
      batches.clear();
      selected = null;
      delete ui.detail.dataset.taskId;
      ui.detailHint.hidden = false;
      ui.detailBody.hidden = true;
      table.structureDirty = true;
      table.measured = false;
    } else {
      for (const id of tasks.keys()) dirty.add(id);
      table.rows.forEach((r) => r.el.remove());
      table.free.forEach((r) => r.el.remove());
      table.rows.clear();
      table.free.length = 0;
      table.drawn.clear();
    }
    return view;
  }

  function pickView(view) {
    pickedView = view;
    try {
      localStorage.setItem(VIEW_KEY, view);
    } catch (e) {
      // Not remembered, still shown.
    }
    applyView();
    render();
  }

  function initControls() {
    for (const b of ui.viewBtns) b.addEventListener("click", () => pickView(b.dataset.view));
    ui.sort.addEventListener("change", () => setSort(ui.sort.value, null));
    ui.sortDir.addEventListener("click", () => setSort(table.sortKey, !table.descending));
    ui.filterStatus.addEventListener("change", () => setFilter(false));
    ui.filterTemplate.addEventListener("change", () => setFilter(false));
    ui.filterText.addEventListener("input", () => setFilter(true));
    ui.pageNewest.addEventListener("click", () => loadPage(0));
    ui.pageNewer.addEventListener("click", () => loadPage(pager.page - 1));
    ui.pageOlder.addEventListener("click", () => loadPage(pager.page + 1));
    ui.tvCancel.addEventListener("click", () => requestCancel(taskView.id, ui.tvCancel));
    for (const b of ui.vtHead.querySelectorAll("button[data-sort]")) {
      b.addEventListener("click", () => {
        const key = b.dataset.sort;
        setSort(key, key === table.sortKey ? !table.descending : defaultDescending(key));
      });
    }
    ui.vt.addEventListener("scroll", () => queueRender(true), { passive: true });
    ui.vt.addEventListener("click", (event) => {
      const rowEl = event.target.closest(".vt-row");
      if (!rowEl || !rowEl.taskId) return;
      table.activeId = rowEl.taskId;
      openTask(rowEl.taskId);
    });
    ui.vt.addEventListener("keydown", onTableKey);
    ui.vt.addEventListener("focus", () => {
      if (table.activeId === null || !tasks.has(table.activeId)) {
        const first = table.order[Math.min(table.order.length - 1, Math.ceil(ui.vt.scrollTop / table.rowH))];
        table.activeId = first ? first.id : null;
      }
      queueRender(true);
    });
    window.addEventListener("resize", () => {
      table.measured = false;
      queueRender(true);
    });
    window.addEventListener("hashchange", route);
    document.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && taskView.id !== null && !ui.dialog.open) {
        event.preventDefault();
        closeTask();
      }
    });
    ui.tvBack.addEventListener("click", (event) => {
      event.preventDefault();
      closeTask();
    });
    ui.sort.value = table.sortKey;
  }

  // Pages and filters ----------------------------------------------------------------------------------

  // The list is a page of the task listing (GET /api/v1/progress/tasks, docs/API.md): filtered by the server
  // (status, template, text in the id), newest first, PAGE_SIZE tasks at a time, and, with Redis, the fleet's
  // tasks too, finished ones included. The first page stays live: tasks created after it was read appear at its top
  // as "*" brings them. A later page holds the tasks the listing gave for it, each kept current by "*" while its
  // runner reports. The same filter is applied here to what the page holds, so a task that stops matching (a
  // status filter) leaves the list at once. Sorting orders the page's tasks.
  const filter = { status: "", template: "", text: "" };
  const pager = {
    page: 0, // 0: the newest
    cursors: [null], // the listing's cursor of each page read so far
    next: null, // next_cursor of the page shown: null on the last
    boundary: null, // the first page's oldest task {createdMs, id} when more follow: older ones are on later pages
    listed: new Set(), // the ids the listing gave for the page shown (a later page is just these)
    generation: 0, // of the latest request: an older answer is dropped
    state: "idle", // loading, error
    loads: 0,
    error: "",
    textTimer: null,
    suspendEviction: false,
  };

  function matchesFilter(t) {
    const d = t.data;
    if (filter.status && d.status !== filter.status) return false;
    if (filter.template && d.template_id !== filter.template) return false;
    return !filter.text || t.id.toLowerCase().includes(filter.text);
  }

  function inPage(t) {
    if (pager.page > 0) return pager.listed.has(t.id);
    const b = pager.boundary;
    // The listing's order: creation time, then id, newest and highest first.
    return b === null || t.createdMs > b.createdMs || (t.createdMs === b.createdMs && t.id >= b.id);
  }

  function shows(t) {
    return matchesFilter(t) && inPage(t);
  }

  function shownText(n) {
    const filtered = filter.status || filter.template || filter.text;
    if (pager.page === 0 && pager.boundary === null) {
      return !filtered && n === tasks.size ? n + " tasks" : n + " of " + tasks.size + " tasks";
    }
    return n + " task" + (n === 1 ? "" : "s") + " on this page";
  }

  /** What the list shows changed (filter, page): every card and the table's order are looked at again. */
  function listChanged() {
    table.structureDirty = true;
    if (shownView !== "table") for (const id of tasks.keys()) dirty.add(id);
    queueRender(true);
  }

  /** `keepScroll`: the same page read again (after a reconnect), where the reader stays where they were. */
  function loadPage(page, { keepScroll = false } = {}) {
    if (page < 0 || page >= pager.cursors.length) return;
    clearTimeout(pager.textTimer);
    const generation = ++pager.generation;
    const query = new URLSearchParams({ limit: String(PAGE_SIZE) });
    if (filter.status) query.set("status", filter.status);
    if (filter.template) query.set("template_id", filter.template);
    if (filter.text) query.set("id_contains", filter.text);
    if (pager.cursors[page]) query.set("cursor", pager.cursors[page]);
    pager.state = "loading";
    renderPager();
    getJSON("/tasks?" + query.toString())
      .then((answer) => {
        if (generation !== pager.generation) return;
        const listed = Array.isArray(answer.tasks) ? answer.tasks.filter((d) => d && typeof d.task_id === "string") : [];
        pager.page = page;
        pager.cursors.length = page + 1;
        pager.next = typeof answer.next_cursor === "string" ? answer.next_cursor : null;
        if (pager.next !== null) pager.cursors.push(pager.next);
        pager.listed = new Set(listed.map((d) => d.task_id));
        const last = listed[listed.length - 1];
        pager.boundary = page === 0 && pager.next !== null && last
          ? { createdMs: parseTime(last.created_at) || 0, id: last.task_id }
          : null;
        ingestListed(listed);
        pager.state = "idle";
        pager.error = "";
        pager.loads += 1;
        ui.pager.dataset.loads = String(pager.loads); // listings read so far (tests wait on it)
        if (!keepScroll && (page > 0 || pager.boundary !== null)) ui.vt.scrollTop = 0;
        renderPager();
        listChanged();
      })
      .catch((error) => {
        if (generation !== pager.generation) return;
        pager.state = "error";
        pager.error = error.message;
        renderPager();
      });
  }

  /** The listing's tasks, taken like updates unless the page already has a later state of one. Oldest first, so
   *  that the order of arrival (which breaks ties of the creation time's millisecond) is the listing's. */
  function ingestListed(listed) {
    pager.suspendEviction = true;
    try {
      for (let i = listed.length - 1; i >= 0; i--) {
        const d = listed[i];
        const t = tasks.get(d.task_id);
        const seq = num(d.seq);
        if (t && seq !== null && ((t.held && t.held.seq >= seq) || num(t.data.seq) >= seq)) continue;
        onProgress({ type: "progress.update", task_id: d.task_id, seq: seq, data: d });
      }
    } finally {
      pager.suspendEviction = false;
    }
    evictFinished();
  }

  function renderPager() {
    ui.pager.dataset.state = pager.state;
    ui.pageNewest.disabled = pager.page === 0;
    ui.pageNewer.disabled = pager.page === 0;
    ui.pageOlder.disabled = pager.next === null;
    setText(ui.pageLabel, pager.state === "error"
      ? "Page " + (pager.page + 1) + ": the listing failed (" + pager.error + ")"
      : "Page " + (pager.page + 1));
  }

  /** The templates seen, as the template filter's choices (kept in order; the chosen one stays). */
  const knownTemplates = new Set();

  function noteTemplate(template) {
    if (typeof template !== "string" || !template || knownTemplates.has(template)) return;
    knownTemplates.add(template);
    const option = el("option", null, template);
    option.value = template;
    let before = null;
    for (const o of ui.filterTemplate.options) {
      if (o.value && o.value > template) {
        before = o;
        break;
      }
    }
    ui.filterTemplate.insertBefore(option, before);
  }

  // Cancel: the WebSocket's cancel message (the client's cancel()); the task's runner stops the task -------------

  function requestCancel(id, button) {
    if (id === null || !client) return;
    button.disabled = true;
    setText(button, "Cancelling…");
    client.cancel(id, { reason: CANCEL_REASON }).catch((error) => {
      button.disabled = false;
      setText(button, button === ui.tvCancel ? "Cancel task" : "Cancel");
      const t = tasks.get(id);
      if (t) dirty.add(id);
      queueRender(true);
      showWarning("Cancel of " + id + " refused: " + (error.code === "conflict"
        ? "the task has already finished."
        : error.code === "not_found" ? "the listener does not know the task." : error.code + ": " + error.message));
    });
  }

  /** A cancel button as the task's state says: offered while it runs, "requested" until its runner answers. */
  function updateCancelButton(button, d, label) {
    const open = !TERMINAL.has(d.status);
    button.hidden = !open;
    if (!open) return;
    const requested = d.cancel_requested === true;
    if (requested) {
      button.disabled = true;
      setText(button, "Cancel requested");
      button.title = "The task's runner stops it at its next step" + (d.cancel_reason ? " (" + d.cancel_reason + ")" : "");
    } else if (button.textContent !== "Cancelling…") {
      button.disabled = false;
      setText(button, label);
      button.title = "Ask the task's runner to stop it";
    }
  }

  // The table ------------------------------------------------------------------------------------------

  const table = {
    order: [], // the tasks listed, filtered and sorted
    sortKey: "created",
    descending: true,
    liveSort: false, // whether the sort key moves with every update
    structureDirty: true, // tasks came or went: sort at the next frame
    orderStale: false, // a sort key moved: sort again, at most every RESORT_MS
    lastSort: 0,
    sortTimer: null,
    dirty: new Set(), // tasks updated since their row was last drawn
    clockTick: false,
    rows: new Map(), // index in order → row drawn there
    drawn: new Set(), // ids of the tasks whose rows are drawn: their updates are never held
    free: [],
    rowSerial: 0,
    rowH: 34,
    viewH: 0,
    bodyTop: 0,
    measured: false,
    activeId: null,
    scrollTop: 0,
  };

  function defaultDescending(key) {
    return key === "created" || key === "updated" || key === "progress";
  }

  function setSort(key, descending) {
    table.sortKey = key;
    table.descending = descending === null ? defaultDescending(key) : descending;
    table.liveSort = key === "updated" || key === "eta" || key === "status" || key === "progress";
    ui.sort.value = key;
    for (const b of ui.vtHead.querySelectorAll("button[data-sort]")) {
      const cell = b.parentNode;
      if (b.dataset.sort === key) cell.setAttribute("aria-sort", table.descending ? "descending" : "ascending");
      else cell.removeAttribute("aria-sort");
    }
    table.structureDirty = true;
    queueRender(true);
  }

  /** A filter changed: the page filters what it holds at once, and asks the listing for its first page. */
  function setFilter(typed) {
    filter.status = ui.filterStatus.value;
    filter.template = ui.filterTemplate.value;
    filter.text = ui.filterText.value.trim().toLowerCase().slice(0, 256);
    listChanged();
    clearTimeout(pager.textTimer);
    if (typed) pager.textTimer = setTimeout(() => loadPage(0), FILTER_TEXT_MS);
    else loadPage(0);
  }

  function sortValue(t) {
    const d = t.data;
    switch (table.sortKey) {
      case "updated": return t.updatedMs;
      case "status": return STATUS_RANK[d.status] !== undefined ? STATUS_RANK[d.status] : 5;
      case "progress": return num(d.overall_progress) || 0;
      // No ETA sorts after every ETA either way: the tasks that can say when they end come first.
      case "eta": return t.etaTarget !== null && !TERMINAL.has(d.status) ? t.etaTarget : null;
      case "id": return t.id;
      case "template": return String(d.template_id || "");
      default: return t.createdMs;
    }
  }

  function rebuildOrder() {
    const list = [];
    for (const t of tasks.values()) {
      if (!shows(t)) continue;
      t.sortValue = sortValue(t);
      list.push(t);
    }
    const sign = table.descending ? -1 : 1;
    list.sort((a, b) => {
      const x = a.sortValue;
      const y = b.sortValue;
      if (x === null || y === null) {
        if (x !== y) return x === null ? 1 : -1;
      } else if (x !== y) {
        return (x < y ? -1 : 1) * sign;
      }
      // Ties in order of creation (newest first), so rows do not swap places between sorts.
      return b.createdMs - a.createdMs || b.arrival - a.arrival;
    });
    table.order = list;
    table.structureDirty = false;
    table.orderStale = false;
    table.lastSort = Date.now();
    ui.vt.setAttribute("aria-rowcount", String(list.length + 1));
    setText(ui.shown, shownText(list.length));
    // Every drawn row may now show another task.
    for (const r of table.rows.values()) r.index = -1;
  }

  function measureTable() {
    const rowH = parseFloat(getComputedStyle(ui.vt).getPropertyValue("--row-h"));
    if (rowH > 0 && rowH !== table.rowH) {
      table.rowH = rowH;
      for (const r of table.rows.values()) r.index = -1; // placed at the old pitch
    }
    table.viewH = ui.vt.clientHeight;
    table.bodyTop = ui.vtSpacer.offsetTop;
    table.measured = true;
  }

  function renderTable() {
    if (ui.vt.hidden) return;
    const now = Date.now();
    if (table.structureDirty) rebuildOrder();
    else if (table.orderStale) {
      const wait = RESORT_MS - (now - table.lastSort);
      if (wait <= 0) rebuildOrder();
      else if (!table.sortTimer) table.sortTimer = setTimeout(() => { table.sortTimer = null; queueRender(); }, wait);
    }
    if (taskView.id !== null) return; // hidden behind a task's page: its order is kept current, nothing drawn
    // Reads first (layout is clean at the start of a frame), then writes: no forced layout in between.
    if (!table.measured) measureTable();
    const rowH = table.rowH;
    const n = table.order.length;
    const top = Math.max(0, ui.vt.scrollTop - table.bodyTop);
    const first = Math.max(0, Math.floor(top / rowH) - OVERSCAN);
    const last = Math.min(n, Math.ceil((top + table.viewH) / rowH) + OVERSCAN);
    const height = n * rowH + "px";
    if (ui.vtSpacer.style.height !== height) ui.vtSpacer.style.height = height;

    for (const [i, r] of table.rows) {
      if (i < first || i >= last) {
        table.rows.delete(i);
        r.el.hidden = true;
        r.taskId = null;
        table.free.push(r);
      }
    }
    const tick = table.clockTick;
    table.clockTick = false;
    for (let i = first; i < last; i++) {
      let r = table.rows.get(i);
      if (!r) {
        r = table.free.pop() || makeRow();
        r.index = -1;
        r.el.hidden = false;
        table.rows.set(i, r);
      }
      const t = table.order[i];
      const held = !!t.held;
      if (held) readDeferred(t); // its row is drawn: its latest state now
      if (r.index !== i) {
        r.index = i;
        r.el.style.transform = "translateY(" + i * rowH + "px)";
        r.el.setAttribute("aria-rowindex", String(i + 2));
      }
      if (r.taskId !== t.id) fillRow(r, t, true);
      else if (tick || held || table.dirty.has(t.id)) fillRow(r, t, false);
    }
    table.dirty.clear();
    table.drawn.clear();
    for (const r of table.rows.values()) if (r.taskId !== null) table.drawn.add(r.taskId);
    updateActiveRow();
  }

  function makeRow() {
    const row = el("div", "vt-row vt-cols");
    row.setAttribute("role", "row");
    row.id = "vt-row-" + ++table.rowSerial;
    const cell = (cls) => {
      const c = el("span", cls);
      c.setAttribute("role", "gridcell");
      row.appendChild(c);
      return c;
    };
    const id = cell("c-id");
    const template = cell("c-template");
    const status = cell("c-status");
    const badge = el("span", "badge");
    status.appendChild(badge);
    const progress = cell("c-progress");
    const bar = el("span", "mini-bar");
    const fill = el("span", "mini-fill");
    bar.appendChild(fill);
    const pct = el("span", "mini-pct");
    progress.append(bar, pct);
    const stage = cell("c-stage");
    const eta = cell("c-eta");
    const elapsed = cell("c-elapsed");
    ui.vtSpacer.appendChild(row);
    // v: what each part shows now, so an update writes only what changed (no DOM reads to compare).
    return { el: row, id, template, badge, fill, pct, stage, eta, elapsed, index: -1, taskId: null, v: {} };
  }

  function put(r, key, node, text) {
    if (r.v[key] === text) return;
    r.v[key] = text;
    // The same text node rewritten: no node created and collected per update.
    if (node.firstChild && node.firstChild.nodeType === 3 && !node.firstChild.nextSibling) node.firstChild.data = text;
    else node.textContent = text;
  }

  function fillRow(r, t, fresh) {
    const d = t.data;
    if (fresh) {
      r.v = {};
      r.taskId = t.id;
      r.el.taskId = t.id;
      r.el.dataset.taskId = t.id;
      r.id.title = t.id;
    }
    const status = STATUSES.includes(d.status) ? d.status : "queued";
    if (r.v.status !== status) {
      r.el.dataset.status = status;
      r.badge.dataset.status = status;
    }
    put(r, "status", r.badge, d.cancel_requested === true && !TERMINAL.has(status) ? status + " (cancel requested)" : status);
    put(r, "id", r.id, t.id);
    put(r, "template", r.template, String(d.template_id || "?"));
    const overall = Math.max(0, Math.min(100, num(d.overall_progress) || 0));
    const fill = "scaleX(" + (overall / 100).toFixed(4) + ")";
    if (r.v.fill !== fill) {
      r.v.fill = fill;
      r.fill.style.transform = fill; // a transform: composited, no layout of the row
    }
    put(r, "pct", r.pct, formatPercent(overall));
    const stages = d.stages && typeof d.stages === "object" ? d.stages : {};
    const current = stages[String(d.current_stage)];
    const total = num(d.total_stages);
    put(r, "stage", r.stage, current ? (current.name || "stage") + " (" + (d.current_stage + 1) + "/" + (total || "?") + ")" : "");
    put(r, "eta", r.eta, etaText(t, false));
    put(r, "elapsed", r.elapsed, formatDuration(elapsedSeconds(t)));
    const stale = t.stale ? "true" : "false";
    if (r.v.stale !== stale) {
      r.v.stale = stale;
      r.el.dataset.stale = stale;
    }
  }

  function etaText(t, withConfidence) {
    const d = t.data;
    if (t.stale) return "—";
    if (TERMINAL.has(d.status)) return d.status === "completed" ? "Done" : "—";
    if (t.etaTarget === null) return "—";
    const remaining = (t.etaTarget - Date.now()) / 1000;
    const confidence = num(d.eta_confidence);
    return (remaining > 0 ? formatDuration(remaining) : "any moment") +
      (withConfidence && confidence !== null ? " (" + Math.round(confidence * 100) + " % confidence)" : "");
  }

  function elapsedSeconds(t) {
    const d = t.data;
    const started = parseTime(d.started_at) || parseTime(d.created_at);
    if (started === null) return null;
    const end = TERMINAL.has(d.status) ? parseTime(d.completed_at) || parseTime(d.updated_at) : serverNow();
    return (end - started) / 1000;
  }

  function activeIndex() {
    if (table.activeId === null) return -1;
    if (table.activeIdx !== undefined && table.order[table.activeIdx] && table.order[table.activeIdx].id === table.activeId) {
      return table.activeIdx;
    }
    table.activeIdx = table.order.findIndex((t) => t.id === table.activeId);
    return table.activeIdx;
  }

  function updateActiveRow() {
    const idx = activeIndex();
    let activeRow = null;
    for (const [i, r] of table.rows) {
      const on = i === idx;
      if (r.v.active !== on) {
        r.v.active = on;
        r.el.dataset.active = String(on);
        r.el.setAttribute("aria-selected", String(on));
      }
      if (on) activeRow = r;
    }
    const want = activeRow ? activeRow.el.id : "";
    if (ui.vt.getAttribute("aria-activedescendant") !== want) {
      if (want) ui.vt.setAttribute("aria-activedescendant", want);
      else ui.vt.removeAttribute("aria-activedescendant");
    }
  }

  function onTableKey(event) {
    // The column headers' sort buttons sit in the grid too: their keys are theirs.
    if (event.target instanceof Element && event.target.closest("button, input, select, a")) return;
    const n = table.order.length;
    if (n === 0) return;
    let idx = activeIndex();
    const page = Math.max(1, Math.floor(table.viewH / table.rowH) - 1);
    switch (event.key) {
      case "ArrowDown": idx = Math.min(n - 1, idx + 1); break;
      case "ArrowUp": idx = Math.max(0, idx - 1); break;
      case "PageDown": idx = Math.min(n - 1, idx + page); break;
      case "PageUp": idx = Math.max(0, idx - page); break;
      case "Home": idx = 0; break;
      case "End": idx = n - 1; break;
      case "Enter":
      case " ":
        if (idx >= 0) {
          event.preventDefault();
          openTask(table.order[idx].id);
        }
        return;
      default:
        return;
    }
    event.preventDefault();
    table.activeId = table.order[idx].id;
    table.activeIdx = idx;
    // Scroll just enough to show the active row below the sticky header.
    const y = table.bodyTop + idx * table.rowH;
    const head = table.bodyTop;
    if (y - head < ui.vt.scrollTop) ui.vt.scrollTop = y - head;
    else if (y + table.rowH > ui.vt.scrollTop + table.viewH) ui.vt.scrollTop = y + table.rowH - table.viewH;
    queueRender(true);
  }

  // A task's page: #/task/<id> ---------------------------------------------------------------------------

  const taskView = {
    id: null,
    history: [],
    lastSeq: 0,
    partial: false,
    logs: [],
    logKeys: new LogKeys(),
    logDirty: false,
    logRebuild: true,
    logShown: 0,
    logDropped: 0,
    stateDirty: false,
    chartsDirty: false,
    chartsDrawnAt: 0,
    pollTimer: null,
    misses: 0, // history reads answered 404 in a row: each waits twice as long, up to 32 s
    fetched: null, // the state read over REST (a task this page does not hold)
    generation: 0,
    returnFocus: null,
  };

  function route() {
    const m = /^#\/task\/(.+)$/.exec(location.hash);
    let id = null;
    if (m) {
      try {
        id = decodeURIComponent(m[1]);
      } catch (e) {
        id = null; // a malformed link: the list
      }
    }
    if (id !== null) showTask(id);
    else if (taskView.id !== null) hideTask();
  }

  function openTask(id) {
    const hash = "#/task/" + encodeURIComponent(id);
    if (location.hash !== hash) {
      location.hash = hash; // its own URL, so it can be linked and Back returns to the list
      taskView.cameFromList = true;
    }
    showTask(id); // at once: the hashchange event comes a task later
  }

  function closeTask() {
    // Back to the list as the browser's Back would, unless the page was opened on this task (a link).
    if (taskView.cameFromList) history.back();
    else location.hash = "#/";
    hideTask();
  }

  function showTask(id) {
    if (taskView.id === id) return;
    if (taskView.id === null) {
      table.scrollTop = ui.vt.scrollTop;
      taskView.returnFocus = document.activeElement;
    }
    clearTimeout(taskView.pollTimer);
    taskView.id = id;
    taskView.generation += 1;
    taskView.misses = 0;
    taskView.history = [];
    taskView.lastSeq = 0;
    taskView.partial = false;
    taskView.logs = [];
    taskView.logKeys = new LogKeys();
    taskView.logRebuild = true; // the page's log list is drawn anew at its next render
    taskView.logShown = 0; // entries in the drawn list
    taskView.logDropped = 0; // entries trimmed from the top since the list was drawn
    taskView.fetched = null;
    taskView.stateDirty = true;
    taskView.chartsDirty = true;
    taskView.chartsDrawnAt = 0;
    taskView.logDirty = true;
    ui.tvCancel.hidden = true;
    ui.tvCancel.disabled = false;
    setText(ui.tvCancel, "Cancel task");
    document.body.dataset.route = "task";
    document.title = id + " — ProgressEngine"; // a bookmark or tab says which task
    ui.tv.hidden = false;
    ui.tv.dataset.taskId = id;
    // Nothing of the previous task's page may stand in for this one's until its state comes.
    delete ui.tv.dataset.status;
    for (const node of [ui.tvStatus, ui.tvMeta, ui.tvSummary, ui.tvError, ui.tvNote]) node.textContent = "";
    ui.tvError.hidden = true;
    ui.tvNote.hidden = true;
    ui.tvLog.textContent = "";
    ui.tvPreviews.textContent = "";
    delete ui.tvPreviews.dataset.key;
    for (const box of [ui.tvTimeline, ui.tvProgress, ui.tvRate, ui.tvEta, ui.tvRes]) box.textContent = "";
    ui.tvStages.textContent = "";
    delete ui.tv.dataset.history;
    delete ui.tv.dataset.lastSeq;
    renderTaskView(false);
    queueRender(true); // the charts in the next frame: the click is answered by the page's head at once
    ui.tvTitle.focus({ preventScroll: true });
    window.scrollTo(0, 0);
    const known = tasks.get(id);
    if (!known) fetchTaskState(id, taskView.generation);
    fetchHistory(id, taskView.generation);
    fetchTaskLogs(id, taskView.generation);
  }

  function hideTask() {
    taskView.cameFromList = false;
    clearTimeout(taskView.pollTimer);
    taskView.id = null;
    taskView.generation += 1;
    ui.tv.hidden = true;
    delete ui.tv.dataset.taskId;
    document.body.dataset.route = "list";
    document.title = LIST_TITLE;
    table.measured = false;
    table.structureDirty = true;
    render();
    if (!ui.vt.hidden) ui.vt.scrollTop = table.scrollTop;
    const back = taskView.returnFocus;
    taskView.returnFocus = null;
    if (back && document.contains(back) && back !== document.body) back.focus({ preventScroll: true });
    else if (!ui.vt.hidden) ui.vt.focus({ preventScroll: true });
    queueRender(true);
  }

  function getJSON(path) {
    return fetch(API + path + (path.includes("?") ? tokenQuery.replace("?", "&") : tokenQuery), { cache: "no-store" })
      .then((r) => (r.ok ? r.json() : Promise.reject(new Error(r.status === 404 ? "not found" : "HTTP " + r.status))));
  }

  function fetchTaskState(id, generation) {
    getJSON("/tasks/" + encodeURIComponent(id))
      .then((body) => {
        if (generation !== taskView.generation) return;
        taskView.fetched = body;
        taskView.stateDirty = true;
        queueRender();
      })
      .catch((e) => {
        if (generation !== taskView.generation || tasks.has(id)) return;
        ui.tvNote.hidden = false;
        setText(ui.tvNote, e.message === "not found"
          ? "The listener does not know this task (never created, or past its retention)."
          : "The task could not be read (" + e.message + ").");
      });
  }

  function fetchHistory(id, generation) {
    getJSON("/tasks/" + encodeURIComponent(id) + "/history?after_seq=" + taskView.lastSeq)
      .then((body) => {
        if (generation !== taskView.generation) return;
        taskView.misses = 0;
        const events = Array.isArray(body.events) ? body.events : [];
        if (taskView.lastSeq === 0 && body.first_seq > 1) taskView.partial = true;
        for (const e of events) {
          if (typeof e.seq !== "number" || e.seq <= taskView.lastSeq) continue;
          taskView.history.push(e);
          taskView.lastSeq = e.seq;
        }
        ui.tv.dataset.history = String(taskView.history.length);
        ui.tv.dataset.lastSeq = String(taskView.lastSeq);
        if (events.length) {
          taskView.chartsDirty = true;
          queueRender();
        }
        const state = taskState();
        if (state && !TERMINAL.has(state.status)) pollHistory(id, generation);
        else if (!state) pollHistory(id, generation);
      })
      .catch((e) => {
        if (generation !== taskView.generation) return;
        // A task the listener does not know (yet, or any more): asked again less and less often.
        if (e.message === "not found" && !tasks.has(id)) taskView.misses = Math.min(taskView.misses + 1, 5);
        pollHistory(id, generation);
      });
  }

  function pollHistory(id, generation) {
    clearTimeout(taskView.pollTimer);
    taskView.pollTimer = setTimeout(() => {
      if (generation === taskView.generation) fetchHistory(id, generation);
    }, HISTORY_POLL_MS * 2 ** taskView.misses);
  }

  function fetchTaskLogs(id, generation) {
    getJSON("/tasks/" + encodeURIComponent(id) + "/logs")
      .then((body) => {
        if (generation !== taskView.generation || !Array.isArray(body.logs)) return;
        if (mergeTaskLogs(body.logs)) {
          taskView.logDirty = true;
          queueRender();
        }
      })
      .catch(() => {
        // The live lines still come over the WebSocket.
      });
  }

  /**
   * Adds log entries the task's page does not have yet, in time order, the newest TASK_PAGE_LOGS kept; returns
   * whether any was new. Lines that come in order (the live ones) are appended to the drawn list at the next render;
   * an older one makes it drawn anew.
   */
  /** `live`: lines as they came, each one new; else read back. */
  function mergeTaskLogs(entries, live = false) {
    const logs = taskView.logs;
    let added = false;
    let ordered = true;
    for (const e of taskView.logKeys.take(entries, live)) {
      const last = logs[logs.length - 1];
      if (last && (parseTime(e.timestamp) || 0) < (parseTime(last.timestamp) || 0)) ordered = false;
      logs.push(e);
      added = true;
    }
    if (!added) return false;
    if (!ordered) {
      logs.sort((a, b) => (parseTime(a.timestamp) || 0) - (parseTime(b.timestamp) || 0));
      taskView.logRebuild = true;
    }
    if (logs.length > TASK_PAGE_LOGS) {
      const dropped = logs.splice(0, logs.length - TASK_PAGE_LOGS);
      for (const e of dropped) taskView.logKeys.drop(e);
      taskView.logDropped += dropped.length;
    }
    return true;
  }

  /** The task's latest state: live from the WebSocket, else as read over REST. */
  function taskState() {
    const t = tasks.get(taskView.id);
    return t ? t.data : taskView.fetched;
  }

  function renderTaskView(withCharts) {
    const id = taskView.id;
    const t = tasks.get(id);
    const d = taskState();
    setText(ui.tvTitle, id);
    if (taskView.stateDirty && d) {
      taskView.stateDirty = false;
      ui.tvNote.hidden = true;
      const status = STATUSES.includes(d.status) ? d.status : "queued";
      ui.tv.dataset.status = status;
      ui.tvStatus.dataset.status = status;
      setText(ui.tvStatus, status);
      updateCancelButton(ui.tvCancel, d, "Cancel task");
      const parts = [d.template_id || "?"];
      if (d.template_category) parts.push(d.template_category);
      if (d.quality) parts.push(d.quality);
      if (d.batch_id) parts.push("batch " + d.batch_id);
      setText(ui.tvMeta, parts.join(" · "));
      const overall = Math.max(0, Math.min(100, num(d.overall_progress) || 0));
      const pseudo = t || { data: d, stale: false, etaTarget: null };
      if (!t && !TERMINAL.has(d.status) && num(d.eta_seconds) !== null) pseudo.etaTarget = Date.now() + d.eta_seconds * 1000;
      const eta = etaText(pseudo, true);
      setText(ui.tvSummary, formatPercent(overall) + " · ETA " + eta + " · elapsed " + formatDuration(elapsedSeconds(pseudo)));
      const failed = status === "failed" || status === "cancelled";
      ui.tvError.hidden = !(failed && d.error);
      setText(ui.tvError, failed && d.error ? (status === "failed" ? "Error: " : "Cancelled: ") + d.error : "");
      renderStageTable(d);
      if (TERMINAL.has(d.status) || Date.now() - taskView.chartsDrawnAt >= 1000) {
        taskView.chartsDirty = true; // the charts' right edge is "now" while the task runs
      }
    }
    if (taskView.chartsDirty && d && withCharts !== false) {
      taskView.chartsDirty = false;
      taskView.chartsDrawnAt = Date.now();
      renderCharts(t, d);
    }
    if (taskView.logDirty) {
      taskView.logDirty = false;
      if (t) mergeTaskLogs(t.logs); // the live lines this page received
      renderTaskLog(d);
    }
  }

  /** The origin of the page's time axes and stage starts: the task's creation, its first history event. */
  function taskOrigin(d) {
    return parseTime(d.created_at) || parseTime(d.started_at);
  }

  function taskEnd(d) {
    return TERMINAL.has(d.status) ? parseTime(d.completed_at) || parseTime(d.updated_at) : null;
  }

  function renderStageTable(d) {
    const start = taskOrigin(d);
    ui.tvStages.textContent = "";
    for (const s of stageList(d)) {
      const tr = el("tr");
      tr.dataset.status = s.status || "pending";
      tr.dataset.stage = String(s.index);
      const th = el("th", null, s.name || "stage " + s.index);
      th.scope = "row";
      if (s.description) th.title = s.description;
      const begun = parseTime(s.started_at);
      const progress = s.status === "completed" ? 1 : num(s.progress) || 0;
      const status = s.status || "pending";
      let duration = num(s.duration);
      if (duration === null && begun !== null && s.status === "in_progress") duration = (serverNow() - begun) / 1000;
      tr.append(
        th,
        el("td", "st-weight", Math.round((num(s.weight) || 0) * 1000) / 10 + " %"),
        el("td", "st-start", begun !== null && start !== null ? "+" + formatDuration((begun - start) / 1000) : "—"),
        el("td", "st-duration", duration !== null ? formatDuration(duration) : "—"),
        el("td", "stage-status", status === "in_progress" ? "in progress " + Math.round(progress * 100) + "\u00a0%" : status)
      );
      ui.tvStages.appendChild(tr);
    }
  }

  // Charts: plain SVG, one function draws them all ---------------------------------------------------

  const CH = 180;
  const PAD = { l: 52, r: 10, t: 10, b: 24 };

  /** A chart's width in its own units: the box's width in CSS pixels, so its text is drawn at 11 px on a phone as
   *  on a laptop (a fixed viewBox scaled to the box shrinks or blows up the text with it). */
  function chartWidth(box) {
    return Math.max(280, Math.round(box.clientWidth) || 560);
  }

  /** Time labels along a plot this wide: about one per 70 px, so they never run into each other on a phone. */
  function xTicks(width) {
    return Math.max(1, Math.min(4, Math.floor(width / 70)));
  }

  /** Axis labels: short enough for the margin at any magnitude. */
  function axisDuration(seconds) {
    if (seconds < 10) return seconds.toFixed(1) + " s";
    if (seconds < 120) return Math.round(seconds) + " s";
    if (seconds < 7200) return Math.round(seconds / 60) + " min";
    return (seconds / 3600).toFixed(seconds < 36000 ? 1 : 0) + " h";
  }

  /** A line chart. series: [{cls, points: [[x, y], …], step?}]; x in server ms, y in the unit of yFormat.
   *  The axis ranges are kept on the <svg> (data-x0 … data-y1), so a test can read back each point's value. */
  function lineChart(box, opts) {
    const CW = opts.width;
    box.textContent = "";
    const root = svg("svg", { viewBox: "0 0 " + CW + " " + CH, class: "chart", role: "img", "aria-label": opts.label });
    const x0 = opts.x0;
    const x1 = opts.x1 > opts.x0 ? opts.x1 : opts.x0 + 1000;
    const y0 = opts.y0;
    const y1 = opts.y1 > opts.y0 ? opts.y1 : opts.y0 + 1;
    const w = CW - PAD.l - PAD.r;
    const h = CH - PAD.t - PAD.b;
    const X = (x) => PAD.l + ((x - x0) / (x1 - x0)) * w;
    const Y = (y) => PAD.t + h - ((y - y0) / (y1 - y0)) * h;
    Object.assign(root.dataset, { x0: String(x0), x1: String(x1), y0: String(y0), y1: String(y1),
      plot: [PAD.l, PAD.t, w, h].join(",") });
    root.appendChild(svg("rect", { x: PAD.l, y: PAD.t, width: w, height: h, class: "plot" }));
    for (let i = 0; i <= 4; i++) {
      const v = y0 + ((y1 - y0) * i) / 4;
      const y = Y(v);
      root.appendChild(svg("line", { x1: PAD.l, x2: PAD.l + w, y1: y, y2: y, class: "grid" }));
      const label = svg("text", { x: PAD.l - 4, y: y + 4, class: "axis", "text-anchor": "end" });
      label.textContent = opts.yFormat(v);
      root.appendChild(label);
    }
    const ticks = xTicks(w);
    for (let i = 0; i <= ticks; i++) {
      const x = X(x0 + ((x1 - x0) * i) / ticks);
      const label = svg("text", { x: x, y: CH - 6, class: "axis", "text-anchor": i === 0 ? "start" : i === ticks ? "end" : "middle" });
      label.textContent = "+" + axisDuration(((x1 - x0) * i) / ticks / 1000);
      root.appendChild(label);
    }
    for (const s of opts.series) {
      if (!s.points.length) continue;
      const pts = s.points.map(([x, y]) => X(x).toFixed(2) + "," + Y(y).toFixed(2));
      if (s.points.length === 1 || s.dots) {
        for (const p of pts) {
          const [cx, cy] = p.split(",");
          root.appendChild(svg("circle", { cx: cx, cy: cy, r: 2.5, class: "dot " + s.cls }));
        }
      }
      if (s.points.length > 1) {
        const line = svg("polyline", { points: pts.join(" "), class: "series " + s.cls, fill: "none" });
        line.dataset.n = String(s.points.length);
        root.appendChild(line);
      }
    }
    if (opts.marks) {
      for (const m of opts.marks) {
        const x = X(m.x);
        root.appendChild(svg("line", { x1: x, x2: x, y1: PAD.t, y2: PAD.t + h, class: "mark " + m.cls }));
      }
    }
    box.appendChild(root);
    if (opts.legend) {
      const ul = el("ul", "legend");
      for (const [cls, text] of opts.legend) {
        const li = el("li", "legend-item " + cls, text);
        ul.appendChild(li);
      }
      box.appendChild(ul);
    }
    if (opts.note) box.appendChild(el("p", "hint chart-note", opts.note));
    return root;
  }

  function renderCharts(t, d) {
    const events = taskView.history;
    const start = taskOrigin(d) || (events.length ? parseTime(events[0].timestamp) : serverNow());
    const end = taskEnd(d);
    const right = Math.max(end !== null ? end : serverNow(), start + 1000);
    const partialNote = taskView.partial ? "The engine's history of this task begins after its start: earlier events are gone." : null;

    // Stage timeline: one bar per stage from its start to its end (or now).
    // Widths read before any chart is drawn: one layout, not one per chart.
    const wide = chartWidth(ui.tvTimeline);
    const half = chartWidth(ui.tvProgress);
    renderTimeline(d, start, right, wide);

    // Progress over time, from the history's events.
    const progress = [];
    for (const e of events) {
      const at = parseTime(e.timestamp);
      if (at !== null && typeof e.overall_progress === "number") progress.push([at, e.overall_progress]);
    }
    const pc = lineChart(ui.tvProgress, {
      width: half,
      label: "Overall progress over time", x0: start, x1: right, y0: 0, y1: 100,
      yFormat: (v) => Math.round(v) + " %", series: [{ cls: "s-progress", points: progress }],
      marks: stageMarks(d), note: partialNote || (progress.length ? null : "No history events yet."),
    });
    pc.dataset.events = String(progress.length);

    // Step rate: progress gained per second, over windows of at least a second (single steps come too close).
    const rate = [];
    let a = null;
    for (const p of progress) {
      if (a === null) { a = p; continue; }
      const dt = (p[0] - a[0]) / 1000;
      if (dt >= 1 || (p === progress[progress.length - 1] && dt > 0)) {
        rate.push([a[0] + (p[0] - a[0]) / 2, Math.max(0, (p[1] - a[1]) / dt)]);
        a = p;
      }
    }
    const rmax = rate.reduce((m, p) => Math.max(m, p[1]), 0);
    lineChart(ui.tvRate, {
      width: half,
      label: "Step rate: overall progress per second", x0: start, x1: right, y0: 0, y1: niceMax(rmax),
      yFormat: (v) => (v < 10 ? v.toFixed(1) : Math.round(v)) + " %/s", series: [{ cls: "s-rate", points: rate, dots: rate.length < 3 }],
      note: rate.length ? "Percent of the whole task gained per second, averaged over ≥ 1 s." : "Not enough history for a rate yet.",
    });

    // ETA: the remaining time as predicted at each moment, and (once finished) the time that really remained.
    const predicted = [];
    const seen = t ? t.etaSeen : [];
    for (let i = 0; i + 1 < seen.length; i += 2) predicted.push([seen[i], Math.max(0, (seen[i + 1] - seen[i]) / 1000)]);
    if (!predicted.length && !TERMINAL.has(d.status) && num(d.eta_seconds) !== null) {
      const at = parseTime(d.updated_at) || serverNow();
      predicted.push([at, d.eta_seconds]);
    }
    const actual = [];
    if (end !== null && d.status === "completed") {
      const from = predicted.length ? Math.min(predicted[0][0], start) : start;
      actual.push([from, (end - from) / 1000], [end, 0]);
    }
    const ymax = niceMax(Math.max(1, ...predicted.map((p) => p[1]), ...actual.map((p) => p[1])));
    const errors = [];
    if (end !== null && d.status === "completed") for (const [at, rem] of predicted) errors.push(Math.abs(at + rem * 1000 - end) / 1000);
    const meanErr = errors.length ? errors.reduce((s, x) => s + x, 0) / errors.length : null;
    const ec = lineChart(ui.tvEta, {
      width: half,
      label: "Remaining time as predicted at each moment, and as it really was", x0: start, x1: right, y0: 0, y1: ymax,
      yFormat: axisDuration,
      series: [{ cls: "s-actual", points: actual }, { cls: "s-eta", points: predicted, dots: predicted.length < 30 }],
      legend: [["s-eta", "predicted remaining"], ["s-actual", d.status === "completed" ? "actual remaining" : "actual end: not yet"]],
      note: (predicted.length
        ? predicted.length + " prediction" + (predicted.length === 1 ? "" : "s") + " received by this page" +
          (meanErr !== null ? "; mean error " + formatDuration(meanErr) + " against the actual end." : ".")
        : "No prediction received by this page for this task.") +
        " The engine's history keeps no ETA: predictions are those this page saw live.",
    });
    ec.dataset.predictions = String(predicted.length);
    if (meanErr !== null) ec.dataset.meanError = meanErr.toFixed(3);

    // Resources: the samples this page received (the last SPARK_POINTS), and the peaks the engine reports.
    const series = [];
    const legend = [];
    const peaks = d.resource_peaks || {};
    for (const r of RESOURCES) {
      if (!r.percent) continue;
      const pts = [];
      if (t) t.res[r.key].forEach((v, i) => { if (v !== null && t.resT[i] !== undefined) pts.push([t.resT[i], v]); });
      series.push({ cls: "s-" + r.key, points: pts, dots: pts.length < 3 });
      legend.push(["s-" + r.key, r.label + (num(peaks[r.key]) !== null ? " (peak " + formatResource(r, peaks[r.key]) + ")" : "")]);
    }
    const mem = RESOURCES.find((r) => r.key === "memory_mb");
    const memNow = d.resource_usage ? num(d.resource_usage.memory_mb) : null;
    const memPeak = num(peaks.memory_mb);
    const rx0 = series.reduce((m, s) => (s.points.length ? Math.min(m, s.points[0][0]) : m), right);
    const resChart = lineChart(ui.tvRes, {
      width: half,
      label: "CPU and GPU use", x0: Math.min(rx0, right - 1000), x1: right, y0: 0, y1: 100,
      yFormat: (v) => Math.round(v) + " %", series: series, legend: legend,
      note: "Samples received by this page (the last " + SPARK_POINTS + ", one per " + SAMPLE_MS + " ms at most). Memory " +
        formatResource(mem, memNow) + (memPeak !== null ? ", peak " + formatResource(mem, memPeak) : "") + ".",
    });
    resChart.dataset.samples = String(series.reduce((n, s) => n + s.points.length, 0));

    renderTaskPreviews(t, d);
  }

  function niceMax(v) {
    if (!(v > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
    return 10 * p;
  }

  function stageMarks(d) {
    const marks = [];
    for (const s of stageList(d)) {
      const at = parseTime(s.started_at);
      if (at !== null && s.index > 0) marks.push({ x: at, cls: "m-stage" });
    }
    return marks;
  }

  function renderTimeline(d, start, right, TIMELINE_W) {
    const box = ui.tvTimeline;
    box.textContent = "";
    const stages = stageList(d);
    const rowH = 22;
    const H = PAD.t + stages.length * rowH + PAD.b;
    const root = svg("svg", { viewBox: "0 0 " + TIMELINE_W + " " + H, class: "chart timeline", role: "img",
      "aria-label": "Stage timeline: each stage from its start to its end" });
    const labelW = Math.min(190, Math.round(TIMELINE_W * 0.35));
    const w = TIMELINE_W - labelW - PAD.r;
    const X = (x) => labelW + ((x - start) / (right - start)) * w;
    Object.assign(root.dataset, { x0: String(start), x1: String(right), plot: [labelW, PAD.t, w, stages.length * rowH].join(",") });
    stages.forEach((s, i) => {
      const y = PAD.t + i * rowH;
      const label = svg("text", { x: labelW - 6, y: y + 15, class: "axis", "text-anchor": "end" });
      label.textContent = (s.name || "stage " + s.index) + " · " + Math.round((num(s.weight) || 0) * 100) + "%";
      root.appendChild(label);
      root.appendChild(svg("rect", { x: labelW, y: y + 3, width: w, height: rowH - 6, class: "lane" }));
      const from = parseTime(s.started_at);
      if (from === null) return;
      const to = parseTime(s.completed_at) || (s.status === "in_progress" && !TERMINAL.has(d.status) ? right : from);
      const x = X(from);
      const bar = svg("rect", { x: x, y: y + 3, width: Math.max(2, X(to) - x), height: rowH - 6,
        class: "stage-bar", "data-status": s.status || "pending" });
      bar.dataset.stage = String(s.index);
      bar.dataset.start = String(from);
      bar.dataset.end = String(to);
      const title = svg("title");
      title.textContent = (s.name || "stage") + ": " + formatDuration((to - from) / 1000);
      bar.appendChild(title);
      root.appendChild(bar);
    });
    const ticks = xTicks(w);
    for (let i = 0; i <= ticks; i++) {
      const label = svg("text", { x: X(start + ((right - start) * i) / ticks), y: H - 6, class: "axis",
        "text-anchor": i === 0 ? "start" : i === ticks ? "end" : "middle" });
      label.textContent = "+" + axisDuration(((right - start) * i) / ticks / 1000);
      root.appendChild(label);
    }
    box.appendChild(root);
  }

  function previewSrc(url) {
    return url + (url.includes("?") ? tokenQuery.replace("?", "&") : tokenQuery);
  }

  function renderTaskPreviews(t, d) {
    const list = t && t.previews.length ? t.previews : typeof d.preview_url === "string" && d.preview_url
      ? [{ url: d.preview_url, at: parseTime(d.updated_at), overall: null }] : [];
    const key = list.map((p) => p.url).join("|");
    if (ui.tvPreviews.dataset.key === key) return;
    ui.tvPreviews.dataset.key = key;
    ui.tvPreviews.textContent = "";
    if (!list.length) {
      ui.tvPreviews.appendChild(el("li", "hint", "No preview."));
      return;
    }
    const start = taskOrigin(d);
    list.forEach((p, i) => {
      const li = el("li", "tv-preview");
      const b = el("button", "thumb");
      b.type = "button";
      const img = el("img");
      img.alt = "Preview " + (i + 1) + " of " + taskView.id;
      img.decoding = "async";
      img.src = previewSrc(p.url);
      b.appendChild(img);
      b.addEventListener("click", () =>
        openPreviewSrc(img.getAttribute("src"), "Preview " + (i + 1) + " — " + taskView.id, img.alt, b));
      const caption = (p.overall !== null && p.overall !== undefined ? formatPercent(p.overall) : "latest") +
        (p.at && start ? " · +" + formatDuration((p.at - start) / 1000) : "");
      li.append(b, el("span", "tv-preview-cap", caption));
      ui.tvPreviews.appendChild(li);
    });
  }

  /** Draws the task page's log: the entries added since the last render at the end, those trimmed off the top
   *  removed; the whole list only when an entry came out of order (or the page is new). */
  function renderTaskLog(d) {
    const logs = taskView.logs;
    const names = stageNames(d);
    let from = taskView.logShown - taskView.logDropped;
    if (taskView.logRebuild || from < 0) {
      ui.tvLog.textContent = "";
      from = 0;
    } else {
      for (let i = 0; i < taskView.logDropped; i++) ui.tvLog.firstElementChild.remove();
      if (taskView.logShown === 0) ui.tvLog.textContent = ""; // the "No log entries." line
    }
    taskView.logRebuild = false;
    taskView.logDropped = 0;
    for (let i = from; i < logs.length; i++) ui.tvLog.appendChild(logItem(logs[i], names));
    taskView.logShown = logs.length;
    if (!logs.length) ui.tvLog.appendChild(el("li", "hint", "No log entries."));
    ui.tvLog.dataset.count = String(logs.length);
  }

  // Preview dialog -------------------------------------------------------------------------------------

  function openPreview(t, opener) {
    openPreviewSrc(t.els.img.getAttribute("src"), "Preview — " + t.id, "Latest preview of " + t.id, opener);
  }

  function openPreviewSrc(src, title, alt, opener) {
    if (!src) return;
    dialogOpener = opener;
    setText(ui.dialogTitle, title);
    ui.dialogImg.alt = alt;
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
    // Countdowns and elapsed times: the cards when they are shown, else only the table's visible rows.
    if (shownView === "cards") {
      for (const t of tasks.values()) if (t.els && !TERMINAL.has(t.data.status)) updateClocks(t);
    } else {
      table.clockTick = true;
    }
    if (taskView.id !== null) taskView.stateDirty = true;
    queueRender();
  }, 1000);

  renderAnalytics();

  // For tests and debugging from the console: feed a progress.update or task.log as if the client delivered it,
  // drop the connection as a network failure would and stay away holdMs (the page reconnects and resumes), read the
  // connection's state.
  window.progressDashboard = Object.freeze({
    ingest: (msg) => {
      if (msg.type === "task.log") onLog(msg.task_id, [msg.entry], true);
      else onUpdate(msg);
      render(true);
    },
    drop: (holdMs) => client.reconnect(holdMs || 0),
    get connection() {
      return { state: ui.conn.dataset.state, reconnects: conn.reconnects, attempt: conn.attempt };
    },
    get taskCount() {
      return tasks.size;
    },
    /** The table's rows in their current order (ids), and the view shown. */
    get order() {
      return table.order.map((t) => t.id);
    },
    get view() {
      return document.body.dataset.view;
    },
  });

  initControls();
  route();
  connect();
})();
