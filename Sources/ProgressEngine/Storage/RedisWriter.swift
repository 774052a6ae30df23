import Glibc

/// What the writer takes from a task for one write: its state and what happened since the last write.
struct TaskWrite {
    let id: String
    var snapshot: TaskSnapshot
    /// Written again after a Redis restart lost it (`EngineStorage.writeAgain`): even from seq 1, not a new task's
    /// first write, so no DEL of the task's keys: what reached the restarted Redis before it (a cancel request, a
    /// listener's log entry) stays.
    var again = false
    /// Events after `persistedSeq`, oldest first (before thinning).
    let events: [HistoryEvent]
    /// The first seq this write covers (the one after the last acknowledged write).
    let firstSeq: UInt64
    /// Whether events were pushed out of the history before this write (Redis down or slow for long).
    let lostEvents: Int
    let logs: [LogEntry]
    /// The log's total count of entries ever appended, acknowledged once the write succeeds.
    let logsTotal: Int
    let lostLogs: Int
}

/// Writes every change of this engine's tasks through to Redis (SPEC §9), on a thread of its own with its own
/// hiredis context, pipelined.
///
/// The runner's thread only ever sets a flag on the task and, when the task goes from clean to dirty, appends
/// its id to a locked inbox and signals a condition variable (as `EngineCore.noteChange` does for the listener).
/// The writer takes each dirty task at most once per `throttle_ms` (urgent changes, such as a stage change or
/// a terminal state, at once): its latest state, the events and log entries added since the last write. While
/// Redis is down or slow the tasks stay dirty in memory: the latest state of every task is kept, events and
/// logs up to the task's history (4096) and log (1000) bounds; what falls out of them is counted as dropped.
/// The writer reconnects with exponential back-off (50 ms to 2 s) and then writes everything still dirty.
/// Its stored variables are `@exclusivity(unchecked)`: the writer thread owns them, and the inbox is read only
/// under its lock.
final class RedisWriter: ChangeConsumer, @unchecked Sendable {
    unowned let engine: any WriterSource
    let url: RedisURL
    let keys: RedisKeys
    let engineId: String
    let metrics: RedisMetrics
    private let throttle: Double
    private let heartbeatInterval: Double
    /// `retention_seconds` in milliseconds (at least 1, what PX takes): the expiry a finished task's keys get.
    let ttl: RedisArgument
    /// The expiry a queued or executing task's keys get: the retention, or four times `expiryRefreshInterval`
    /// when that is longer (a retention shorter than the heartbeat's interval would else let a running task's keys
    /// expire between two refreshes, and the fleet lose the task while it runs).
    let activeTTL: RedisArgument
    /// How often the keys of active tasks get a full retention again (`refreshActiveExpiry`).
    private let expiryRefreshInterval: Double
    @exclusivity(unchecked) private var lastExpiryRefresh = -Double.infinity
    /// Events per write beyond which a flood of progress steps is thinned (see `StoredEvents.thin`).
    static let maxEventsPerWrite = 1024
    /// Bounds of the other writes (templates, ETA records, cancel requests, previews) waiting for Redis, counted
    /// from when they are queued until Redis took them, so a long outage cannot pile them up in memory.
    static let maxQueuedExtras = 10_000
    static let maxQueuedExtraBytes = 64 << 20
    static let streamMaxLength = 4096
    /// How long `progress_engine_close` waits for the last writes (also in include/progress.h).
    static let closeFlushSeconds = 2.0
    static let ioTimeout = 1.0
    private let worker = WorkerThread()
    // Guarded by the worker's lock.
    @exclusivity(unchecked) private var inbox: [String] = []
    @exclusivity(unchecked) private var extrasInbox: [[[RedisArgument]]] = []
    /// Other writes queued and not yet taken by Redis (the inbox and the writer's `extras`), and their bytes.
    @exclusivity(unchecked) private var queuedExtras = 0
    @exclusivity(unchecked) private var queuedExtraBytes = 0
    @exclusivity(unchecked) private var sleeping = false
    /// When `stop()` was first called (monotonic): the close bound counts from it.
    @exclusivity(unchecked) private var stopRequestedAt: Double?

    /// Error replies after which the whole pipeline is sent again (`send`).
    static let passingErrors = ["LOADING", "OOM", "READONLY", "MISCONF", "BUSY", "NOREPLICAS", "MASTERDOWN", "TRYAGAIN"]

    // Writer-thread state.
    @exclusivity(unchecked) private var pending: [IdKey: Double] = [:]
    @exclusivity(unchecked) private var extras: [[[RedisArgument]]] = []
    @exclusivity(unchecked) private var connection: RedisConnection?
    @exclusivity(unchecked) private var everConnected = false
    @exclusivity(unchecked) private var nextConnectAt = 0.0
    @exclusivity(unchecked) private var backoff = 0.05
    @exclusivity(unchecked) private var lastHeartbeat = -Double.infinity
    @exclusivity(unchecked) private var lastError = ""
    @exclusivity(unchecked) private var cancels = CancelPoller()
    /// The `run_id` of the Redis server last connected to: another one after a reconnect is a restart, which may
    /// have lost acknowledged writes (`checkAcknowledged`).
    @exclusivity(unchecked) private var serverRunId: String?
    @exclusivity(unchecked) private var restarted = false

    /// Starts the writer thread. Redis need not be reachable: the writer keeps trying in the background.
    /// - Throws: `EngineError.io` if the thread cannot start.
    init(engine: any WriterSource, url: RedisURL, keys: RedisKeys, engineId: String, metrics: RedisMetrics) throws {
        self.engine = engine
        self.url = url
        self.keys = keys
        self.engineId = engineId
        self.metrics = metrics
        throttle = Double(engine.config.throttleMs) / 1000
        heartbeatInterval = max(0.05, engine.config.heartbeatTimeoutSeconds / 3)
        // PX / PEXPIRE take whole milliseconds, at least 1.
        func expiry(_ seconds: Double) -> RedisArgument { RedisArgument(String(max(1, Int((seconds * 1000).rounded(.down))))) }
        ttl = expiry(engine.config.retentionSeconds)
        expiryRefreshInterval = max(heartbeatInterval, engine.config.retentionSeconds / 4)
        activeTTL = expiry(max(engine.config.retentionSeconds, 4 * expiryRefreshInterval))
        try worker.start("the Redis writer thread", name: "pe-redis-writer") { [self] in self.loop() }
    }

    // MARK: - From any thread

    /// A task entered the writer's feed (`ChangeFeed.storage`); called under its shard lock.
    func enqueue(taskId id: String) {
        worker.lock()
        inbox.append(id)
        // Counted at once, so a reader of the stats never sees 0 while a change waits in the inbox.
        metrics.queueDepth.add(1, ordering: .relaxed)
        if sleeping { worker.signal() }
        worker.unlock()
    }

    /// Queues other writes (a registered template, an ETA record, a cancel request, a preview), bounded; dropped
    /// and counted when full.
    /// - Returns: false when they were dropped.
    @discardableResult
    func enqueue(commands: [[RedisArgument]]) -> Bool {
        let bytes = RedisWriter.size(of: commands)
        worker.lock()
        if queuedExtras >= RedisWriter.maxQueuedExtras || queuedExtraBytes + bytes > RedisWriter.maxQueuedExtraBytes {
            worker.unlock()
            metrics.droppedWrites.add(1, ordering: .relaxed)
            return false
        }
        queuedExtras += 1
        queuedExtraBytes += bytes
        extrasInbox.append(commands)
        if sleeping { worker.signal() }
        worker.unlock()
        return true
    }

    /// Queues a preview's PNG into the task's `previews` hash, which gets the task's expiry (as its other keys:
    /// renewed by the task's writes and while it is active). Dropped and counted when the queue is full.
    func enqueuePreview(taskId: String, name: String, png: [UInt8]) {
        let key = RedisArgument(keys.previews(taskId))
        enqueue(commands: [["HSET", key, RedisArgument(name), RedisArgument(png)], ["PEXPIRE", key, activeTTL]])
    }

    private static func size(of commands: [[RedisArgument]]) -> Int {
        commands.reduce(0) { total, command in command.reduce(total) { $0 + $1.bytes.count } }
    }

    /// Flushes what is dirty, then stops the thread; returns at most `closeFlushSeconds` (and the few
    /// milliseconds of one bounded socket call) after it was called. Idempotent.
    func stop() {
        worker.lock()
        if stopRequestedAt == nil { stopRequestedAt = engine.monotonic.now() }
        worker.unlock()
        worker.stop()
    }

    // MARK: - Writer thread

    private func loop() {
        while true {
            let now = engine.monotonic.now()
            var wakeAt = now + 1
            if connection == nil {
                wakeAt = min(wakeAt, nextConnectAt)
            } else {
                wakeAt = min(wakeAt, lastHeartbeat + heartbeatInterval, cancels.due)
                if let due = pending.values.min() { wakeAt = min(wakeAt, due) }
                if !extras.isEmpty { wakeAt = now }
            }
            let stop = waitForWork(until: wakeAt)
            if stop { break }
            round(now: engine.monotonic.now(), deadline: nil)
        }
        finalFlush()
        connection = nil
        metrics.connected.store(0, ordering: .relaxed)
    }

    /// Sleeps until `deadline` (monotonic) or new work; moves the inbox into the writer's own state.
    /// - Returns: whether the engine is closing.
    private func waitForWork(until deadline: Double) -> Bool {
        worker.lock()
        if inbox.isEmpty && extrasInbox.isEmpty && !worker.stopping {
            let delay = deadline - engine.monotonic.now()
            if delay > 0 {
                sleeping = true
                worker.wait(seconds: delay)
                sleeping = false
            }
        }
        for id in inbox { pending[IdKey(id)] = 0 }
        inbox.removeAll(keepingCapacity: true)
        let more = extrasInbox
        extrasInbox.removeAll(keepingCapacity: true)
        let stop = worker.stopping
        metrics.queueDepth.store(pending.count, ordering: .relaxed)
        worker.unlock()
        extras.append(contentsOf: more)
        return stop
    }

    /// Writes what is due (everything, ignoring the throttle, when `deadline` is set: the engine is closing).
    private func round(now: Double, deadline: Double?) {
        guard ensureConnected(now: now, deadline: deadline) else { return }
        if now - lastHeartbeat >= heartbeatInterval {
            heartbeat(now: now)
            guard connection != nil else { return }
        }
        if restarted {
            checkAcknowledged(now: now)
            guard connection != nil else { return }
        }
        if deadline == nil && now >= cancels.due {
            readCancels(now: now)
            guard connection != nil else { return }
        }
        var writes: [TaskWrite] = []
        var etaTime: Double?
        for (key, due) in pending where due <= now || deadline != nil {
            switch engine.takeWrite(id: key.id, now: now, throttle: deadline != nil ? 0 : throttle) {
            case .nothing: pending[key] = nil
            case let .later(at): pending[key] = at
            case var .write(w):
                pending[key] = nil
                // The stored state carries the ETA as a reader of this engine would see it at this moment.
                if etaTime == nil { etaTime = engine.eventTime() }
                w.snapshot.eta = engine.estimate(w.snapshot, now: etaTime!)
                writes.append(w)
            }
        }
        let batch = extras
        extras.removeAll()
        guard !writes.isEmpty || !batch.isEmpty else {
            if connection != nil { backoff = 0.05 }
            return publishQueueDepth()
        }
        if !send(writes: writes, extras: batch) {
            for w in writes {
                engine.requeueWrite(id: w.id)
                pending[IdKey(w.id)] = 0
            }
            extras.insert(contentsOf: batch, at: 0)
        } else {
            // The back-off starts again only once Redis took a round: one that connects and then refuses every
            // write (OOM, LOADING) keeps doubling it.
            backoff = 0.05
            if !batch.isEmpty {
                let bytes = batch.reduce(0) { $0 + RedisWriter.size(of: $1) }
                worker.lock()
                queuedExtras -= batch.count
                queuedExtraBytes -= bytes
                worker.unlock()
            }
        }
        publishQueueDepth()
    }

    /// Tasks pending here plus those still in the inbox, stored under the lock `enqueue` counts under.
    private func publishQueueDepth() {
        worker.lock()
        metrics.queueDepth.store(pending.count + inbox.count, ordering: .relaxed)
        worker.unlock()
    }

    private func finalFlush() {
        // The bound counts from the close call: a round under way then (a socket call of at most ioTimeout)
        // spends part of it.
        worker.lock()
        let requested = stopRequestedAt ?? engine.monotonic.now()
        worker.unlock()
        let deadline = requested + RedisWriter.closeFlushSeconds
        // Redis unreachable at close: one short attempt, so closing a runner costs it little.
        if connection == nil { nextConnectAt = 0 }
        var attempts = 0
        while engine.monotonic.now() < deadline {
            _ = waitForWork(until: 0)
            if pending.isEmpty && extras.isEmpty { return }
            if connection == nil {
                attempts += 1
                if attempts > 3 { break }
                nextConnectAt = 0
            }
            round(now: engine.monotonic.now(), deadline: deadline)
        }
        if !pending.isEmpty || !extras.isEmpty {
            metrics.droppedWrites.add(pending.count + extras.count, ordering: .relaxed)
            StorageLog.write(.error, "close_unflushed", [("redis", url.display), ("tasks", String(pending.count)),
                                                          ("other_writes", String(extras.count)),
                                                          ("reason", connection == nil ? lastError : "time bound")])
        }
    }

    private func ensureConnected(now: Double, deadline: Double?) -> Bool {
        if let connection {
            // While the engine closes, no read or write may run past the close bound.
            if let deadline { connection.setTimeout(max(0.05, min(RedisWriter.ioTimeout, deadline - now))) }
            return true
        }
        guard now >= nextConnectAt else { return false }
        let timeout = deadline.map { max(0.05, min(RedisWriter.ioTimeout, $0 - now)) } ?? RedisWriter.ioTimeout
        do {
            connection = try RedisConnection(url: url, timeout: timeout)
            if everConnected { metrics.reconnects.add(1, ordering: .relaxed) }
            StorageLog.write(.info, everConnected ? "reconnected" : "connected", [("redis", url.display),
                                                                                  ("role", "writer")])
            everConnected = true
            metrics.connected.store(1, ordering: .relaxed)
            if let runId = RedisWriter.runId(of: connection!) {
                if let serverRunId, serverRunId != runId { restarted = true }
                serverRunId = runId
            }
            // Everything queued while disconnected is written now; heartbeats first, so no listener takes a
            // live task for lost.
            lastHeartbeat = -Double.infinity
            cancels.reset()
            for key in pending.keys { pending[key] = 0 }
            return true
        } catch let e as EngineError {
            disconnected(e.message, now: now)
            return false
        } catch {
            return false
        }
    }

    private func disconnected(_ why: String, now: Double) {
        let wasConnected = connection != nil
        connection = nil
        metrics.connected.store(0, ordering: .relaxed)
        nextConnectAt = now + backoff
        backoff = min(backoff * 2, 2)
        if wasConnected || why != lastError {
            StorageLog.write(.warning, "disconnected", [("redis", url.display), ("role", "writer"), ("reason", why),
                ("retry_in_s", String(backoff)),
                ("effect", "the runner is not slowed; writes wait in memory, bounded (redis_dropped_writes counts what "
                    + "the bounds drop), and go once Redis answers: check that redis-server runs and is reachable at "
                    + "this address")])
        }
        lastError = why
    }

    /// The server's `run_id` (INFO server), nil when it cannot be read (INFO renamed or refused).
    private static func runId(of connection: RedisConnection) -> String? {
        guard let text = try? connection.command(["INFO", "server"]).text else { return nil }
        for line in text.split(whereSeparator: \.isNewline) where line.hasPrefix("run_id:") {
            return String(line.dropFirst(7))
        }
        return nil
    }

    /// The stored seq of a task's state (-1: none; -2: the state of another task of that id, created at another
    /// time than ARGV[3], epoch seconds, or than ARGV[1], the millisecond `created_at`, for a state stored without
    /// the precise time), the length of its log, and how many entries engine ARGV[2] had logged when it last
    /// appended (its `logged` key; -1 when another engine appended last, or none did).
    static let storedSeqAndLogs = RedisArgument(stateFields + """
        local v = redis.call('GET', KEYS[1])
        local seq = -1
        if v then
          local precise = created(v)
          if precise ~= tonumber(ARGV[3]) and (precise or text(v, '"created_at":"') ~= ARGV[1]) then
            return {-2, 0, -1}
          end
          seq = number(v, '"seq":') or -1
        end
        return {seq, redis.call('LLEN', KEYS[2]), loggedBy(ARGV[2], KEYS[3]) or -1}
        """)

    /// After a restart of Redis (another `run_id`), which may have lost writes it had acknowledged (an AOF fsynced
    /// every second, none at all): each of this engine's tasks whose stored seq or log is behind what was
    /// acknowledged is written again from there, its last state included, even if it never changes again.
    private func checkAcknowledged(now: Double) {
        let tasks = engine.acknowledgedTasks()
        var again = 0
        do {
            for chunk in stride(from: 0, to: tasks.count, by: 512) {
                let part = tasks[chunk..<min(chunk + 512, tasks.count)]
                guard let connection else { return }
                for t in part {
                    var created: [UInt8] = []
                    ISO8601.write(t.createdAt, into: &created)  // as the state's "created_at" holds it
                    connection.append(["EVAL", RedisWriter.storedSeqAndLogs, "3", RedisArgument(keys.state(t.id)),
                                       RedisArgument(keys.logs(t.id)), RedisArgument(keys.logged(t.id)),
                                       RedisArgument(created), RedisArgument(engineId),
                                       RedisArgument(t.createdAt.description)])
                }
                metrics.commands.add(part.count, ordering: .relaxed)
                var refusal: String?
                for t in part {
                    let answer = try connection.reply()
                    if case let .error(message) = answer {
                        refusal = refusal ?? message  // LOADING, BUSY: the check goes again after the back-off
                        continue
                    }
                    guard case let .array(reply) = answer, reply.count == 3, case let .integer(seq) = reply[0],
                          case let .integer(length) = reply[1], case let .integer(logged) = reply[2] else { continue }
                    // Another task of that id is stored (the id used again elsewhere): not this task's to write.
                    guard seq != -2 else { continue }
                    // This engine's count at its last append is stored with the log, in the same script: what it
                    // acknowledged beyond that is lost. Without it (another engine appended last), the log holds the
                    // newest logCapacity entries: fewer than that of what was acknowledged is a loss.
                    let lostLogs = logged >= 0 ? max(0, t.logs - Int(logged))
                        : max(0, min(t.logs, TaskRecord.logCapacity) - Int(length))
                    guard seq < Int64(t.seq) || lostLogs > 0 else { continue }
                    // No state at all: everything again, without the DEL of a first write (a cancel request sent to
                    // the restarted Redis before this write is the task's; a newer task of the id the script keeps).
                    engine.writeAgain(id: t.id, storedSeq: UInt64(max(0, seq)), storedLogs: seq < 0 ? 0 : t.logs - lostLogs)
                    pending[IdKey(t.id)] = 0
                    again += 1
                }
                if let refusal {
                    disconnected(refusal, now: now)
                    return
                }
            }
        } catch let e as EngineError {
            disconnected(e.message, now: now)
            return
        } catch {
            return
        }
        restarted = false
        let history = restoreFleetHistory()
        StorageLog.write(again + history.refused > 0 ? .warning : .info, "redis_restarted", [("redis", url.display),
            ("tasks_checked", String(tasks.count)), ("tasks_written_again", String(again)),
            ("templates", String(history.templates)), ("completion_records", String(history.records)),
            ("restore_writes_refused", String(history.refused)),
            ("reason", "the Redis server is another run (run_id changed): tasks whose writes it no longer holds are "
                + "written again, and templates and completion records it lacks (restore_writes_refused: the queue "
                + "of other writes was full, see redis_dropped_writes)")])
    }

    /// ZADD of every executing task of this engine, so listeners can tell a live worker from a lost one.
    private func heartbeat(now: Double) {
        lastHeartbeat = now
        if now - lastExpiryRefresh >= expiryRefreshInterval { refreshActiveExpiry(now: now) }
        let ids = engine.activeOwnedTasks().map(\.id)
        guard !ids.isEmpty, let connection else { return }
        let score = RedisArgument(String(SystemClock().now()))
        var sent = 0
        for chunk in stride(from: 0, to: ids.count, by: 1000) {
            var args: [RedisArgument] = ["ZADD", RedisArgument(keys.heartbeats)]
            for id in ids[chunk..<min(chunk + 1000, ids.count)] {
                args.append(score)
                args.append(RedisArgument(id))
            }
            connection.append(args)
            sent += 1
        }
        _ = drainReplies(connection, &sent)
    }

    /// Cancel requests other engines published for this engine's tasks (`CancelPoller`).
    private func readCancels(now: Double) {
        guard let connection else { return }
        do {
            metrics.commands.add(try cancels.read(connection, keys: keys, engine: engine, now: now), ordering: .relaxed)
        } catch let e as EngineError {
            disconnected(e.message, now: engine.monotonic.now())
        } catch {}
    }

    /// SPEC §9: active tasks have their expiry refreshed. A task that runs for longer than `retention_seconds`
    /// without a change (queued behind others, or a long stage that reports nothing) would otherwise lose its keys
    /// while it runs. Every `expiryRefreshInterval` (a quarter of the retention, at least the heartbeat interval)
    /// the keys of this engine's queued and executing tasks get their expiry (`activeTTL`) again, pipelined.
    private func refreshActiveExpiry(now: Double) {
        guard let connection else { return }
        lastExpiryRefresh = now
        // The task index forgets tasks whose keys have expired.
        connection.append(["ZREMRANGEBYSCORE", RedisArgument(keys.tasks), "-inf",
                           RedisArgument("(" + String(SystemClock().now() - engine.config.retentionSeconds))])
        var sent = 1
        var batches = Set<IdKey>()
        for task in engine.activeOwnedTasks() {
            for key in [keys.state(task.id), keys.events(task.id), keys.logs(task.id), keys.logged(task.id),
                        keys.previews(task.id)] {
                connection.append(["PEXPIRE", RedisArgument(key), activeTTL])
                sent += 1
            }
            if let batch = task.batch, batches.insert(IdKey(batch)).inserted {
                connection.append(["PEXPIRE", RedisArgument(keys.batch(batch)), activeTTL])
                sent += 1
            }
            if sent >= 3000 { if !drainReplies(connection, &sent) { return } }
        }
        if drainReplies(connection, &sent) { sweepCreationIndex(connection) }
    }

    /// Index entries the sweep checks at most per round (in lots of 1,000, one round trip each).
    static let maxSweptEntries = 100_000

    /// The creation index (`RedisKeys.tasksByCreation`) keeps a task for as long as Redis keeps its state. Only the
    /// entries created before the retention window can belong to expired tasks: each is checked against its state
    /// key, and dropped when that is gone. A task running for longer than the retention keeps its keys alive
    /// (`refreshActiveExpiry`), and so its entry. Every engine's writer sweeps; a second sweep finds nothing to do.
    private func sweepCreationIndex(_ connection: RedisConnection) {
        let key = RedisArgument(keys.tasksByCreation)
        // Exclusive bound at the cutoff time's 16 hex digits: every member created earlier sorts below it.
        let cutoff = ListPosition(createdAt: SystemClock().now() - engine.config.retentionSeconds, id: "")
        let upper = RedisArgument([UInt8(ascii: "(")] + cutoff.sortKey)
        var lower: RedisArgument = "-"
        var swept = 0, sent = 0
        defer { metrics.commands.add(sent, ordering: .relaxed) }
        do {
            while swept < RedisWriter.maxSweptEntries {
                sent += 1
                guard case let .array(items) = try connection.command(["ZRANGEBYLEX", key, lower, upper, "LIMIT", "0", "1000"])
                else { return }
                let members = items.compactMap { item -> [UInt8]? in
                    if case let .string(member) = item { return member }
                    return nil
                }
                guard let last = members.last else { return }
                // A member that is no sort key is nobody's entry: checked against no key, so dropped.
                let ids = members.map { ListPosition(sortKey: $0)?.id }
                for id in ids { connection.append(["EXISTS", RedisArgument(keys.state(id ?? ""))]) }
                sent += ids.count
                var gone: [RedisArgument] = []
                for (member, id) in zip(members, ids) {
                    if try connection.reply() == .integer(0) || id == nil { gone.append(RedisArgument(member)) }
                }
                if !gone.isEmpty {
                    sent += 1
                    _ = try connection.command(["ZREM", key] + gone)
                }
                swept += members.count
                guard members.count == 1000 else { return }
                lower = RedisArgument([UInt8(ascii: "(")] + last)
            }
        } catch let e as EngineError {
            disconnected(e.message, now: engine.monotonic.now())
        } catch {
            disconnected("\(error)", now: engine.monotonic.now())
        }
    }

    /// Reads `count` pipelined replies (then 0); false when the connection failed.
    private func drainReplies(_ connection: RedisConnection, _ count: inout Int) -> Bool {
        metrics.commands.add(count, ordering: .relaxed)
        defer { count = 0 }
        do {
            for _ in 0..<count { _ = try connection.reply() }
            return true
        } catch let e as EngineError {
            disconnected(e.message, now: engine.monotonic.now())
            return false
        } catch {
            return false
        }
    }

    /// Pipelines the writes and reads every reply.
    /// - Returns: false if the connection failed (nothing counts as written then).
    private func send(writes: [TaskWrite], extras: [[[RedisArgument]]]) -> Bool {
        guard let connection else { return false }
        var count = 0
        for group in extras {
            for command in group {
                connection.append(command)
                count += 1
            }
        }
        var acks: [(String, UInt64, Int)] = []
        // The reply index of each task write, for the task it writes.
        var stateReplies: [Int: String] = [:]
        for w in writes {
            appendWrite(w, to: connection)
            stateReplies[count] = w.id
            count += 1
            acks.append((w.id, w.snapshot.seq, w.logsTotal))
        }
        var overtaken: [(String, UInt64)] = []
        metrics.commands.add(count, ordering: .relaxed)
        var loading: String?
        do {
            for index in 0..<count {
                let reply = try connection.reply()
                if case let .integer(stored) = reply, stored > 0, let id = stateReplies[index] {
                    overtaken.append((id, UInt64(stored)))
                    continue
                }
                guard case let .error(message) = reply else { continue }
                // Refusals that pass: a restarted Redis loading its dataset, one out of memory, a replica after a
                // failover, a failed save, a busy script. Nothing was refused for good, and what a writer sends only
                // once (a preview, a log entry, a task's last state) must not be lost to it.
                if RedisWriter.passingErrors.contains(where: { message.hasPrefix($0) }) {
                    loading = message
                    continue
                }
                metrics.commandErrors.add(1, ordering: .relaxed)
                if lastError != message {
                    lastError = message
                    StorageLog.write(.error, "command_failed", [("redis", url.display), ("reason", message)])
                }
            }
        } catch let e as EngineError {
            disconnected(e.message, now: engine.monotonic.now())
            return false
        } catch {
            return false
        }
        if let loading {
            // Everything goes again, with the reconnect's back-off (the writes are idempotent, as after a lost reply).
            disconnected(loading, now: engine.monotonic.now())
            return false
        }
        for (id, seq, logs) in acks { engine.ackWrite(id: id, seq: seq, logs: logs) }
        for (id, stored) in overtaken { engine.reclaim(id: id, storedSeq: stored) }
        metrics.taskWrites.add(writes.count, ordering: .relaxed)
        return true
    }
}
