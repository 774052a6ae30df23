import Glibc
import Synchronization

/// Options of a task's creation (`options_json`).
struct TaskOptions: Sendable {
    var quality: String?
    var batchId: String?
    var resourceConfig: JSONValue?
    var metadata: JSONValue?
    var resume = false
    var timestamp: Double?

    static func parse(_ text: String?) throws -> TaskOptions {
        var options = TaskOptions()
        guard let text, !text.isEmpty else { return options }
        let reader = try JSONObjectReader(try JSONParser.parse(text, context: "options_json"), context: "options_json")
        try reader.rejectUnknownKeys(allowed: ["quality", "batch_id", "resource_config", "metadata", "resume", "timestamp"],
                                     error: EngineError.json)
        options.quality = try reader.string("quality")
        options.batchId = try reader.string("batch_id")
        if let batch = options.batchId { try EngineCore.validateId(batch, what: "batch_id") }
        options.resourceConfig = try reader.object("resource_config")
        options.metadata = try reader.object("metadata")
        options.resume = try reader.bool("resume") ?? false
        options.timestamp = try reader.number("timestamp")
        return options
    }
}

/// One ProgressEngine instance: live task state, templates, batches, ETA history, and the maintenance
/// thread. Every method is safe to call from any thread.
final class EngineCore: @unchecked Sendable {
    let config: EngineConfig
    let clock: any EngineClock
    let table = TaskTable()
    let templates = Locked<[String: [StageDefinition]]>([:])
    /// batch_id → task ids in creation order.
    let batches = Locked<[String: [String]]>([:])
    /// Ids of tasks with an attached step counter, for the maintenance thread.
    let counterTasks = Locked<Set<String>>([])
    let completions = CompletionHistory()
    let queues = QueueBoard()
    /// Invalid updates counted outside the shards: calls rejected before reaching a task (unknown task, bad event
    /// data) and counter pairs that could not be applied. Added to `invalid_updates`.
    let misses = Atomic<Int>(0)
    /// Rate limit of `logRejectedUnknown`.
    let unknownRejects = Locked(OncePerSecond())
    let events = Atomic<Int>(0)
    let logCount = Atomic<Int>(0)
    let purged = Atomic<Int>(0)
    let lastSweep = Locked<Double>(0)
    var maintenance: MaintenanceThread?
    /// The WebSocket/REST listener when `listen` is set; set once in `init`, before the engine is shared (and
    /// dropped in a forked child, `restartInChild`, while it has one thread).
    var listener: Listener?
    /// Encodes previews off the runners' threads; set in `init` (and in a forked child).
    var previews: PreviewWorker?
    /// The preview folder, made by the engine (and removed on close) when `preview_dir` is not set.
    var ownedPreviewDir: String?
    let previewsWritten = Atomic<Int>(0)
    let previewsFailed = Atomic<Int>(0)
    let previewsDropped = Atomic<Int>(0)
    let resourceSampler = Locked(ResourceSampler())
    /// Redis write-through, recovery and the fleet channel when `redis_url` is set; set once in `init`.
    private(set) var storage: RedisStorage?
    /// The Swift API's change streams (`Engine.changes(of:)`).
    let watchers = ChangeWatchers()

    /// - Parameters:
    ///   - config: parsed configuration.
    ///   - clock: where time comes from (a `ManualClock` in tests).
    ///   - background: start the maintenance thread (tests drive `maintenanceRound()` themselves).
    /// - Throws: `EngineError.config` for a bad listen address or redis_url, `.io` if a thread cannot start or the
    ///   address cannot be bound. An unreachable Redis is no error: the engine retries in the background.
    init(config: EngineConfig, clock: any EngineClock = SystemClock(), background: Bool = true) throws {
        if let url = config.redisURL { _ = try RedisURL.parse(url) }
        self.config = config
        self.clock = clock
        // Each thread starts only after everything it reads is set (pthread_create orders those writes
        // before the thread's reads): storage, then the listener, then the subscriber feeding the listener,
        // then the maintenance thread, which touches all of them.
        do {
            try startPreviews()
            if let url = config.redisURL {
                storage = try RedisStorage(engine: self, urlText: url)
                loadStoredTemplates()
                loadStoredCompletions()
            }
            if let listen = config.listen {
                listener = try Listener(engine: self, address: try ListenAddress.parse(listen))
                try storage?.startSubscriber(engine: self)
            }
            if background {
                try startMaintenance()
            }
        } catch {
            close()
            throw error
        }
        ForkRegistry.add(self)
    }

    func startMaintenance() throws {
        // unowned(unsafe), not weak: a weak reference gives the engine a side table, which sends every
        // retain/release of it (a few per update) down the runtime's slow path. Safe because close(),
        // called by deinit at the latest, joins the thread before the engine goes.
        maintenance = try MaintenanceThread { [unowned(unsafe) self] in self.maintenanceRound() }
    }

    /// The preview folder as configured, or a private temporary one.
    var previewDirectory: String? { previews?.directory }

    private func startPreviews() throws {
        var dir = config.previewDir
        if dir == nil {
            var template = Array("/tmp/progress-previews-XXXXXX".utf8CString)
            guard let made = mkdtemp(&template) else {
                throw EngineError.io("cannot create a temporary preview folder: \(String(cString: strerror(errno))); "
                    + "set preview_dir")
            }
            dir = String(cString: made)
            ownedPreviewDir = dir
        }
        try startPreviewWorker(directory: dir!)
    }

    func startPreviewWorker(directory: String) throws {
        // unowned(unsafe) for the same reason as the maintenance thread's; close() joins this thread too.
        previews = try PreviewWorker(directory: directory, maxSize: config.previewMaxSize) { [unowned(unsafe) self] job, result in
            self.previewFinished(job, result)
        }
    }

    /// The listener's bound port, or -1 without a listener.
    var port: Int { listener?.port ?? -1 }

    /// Stops the background threads, reads every attached counter a last time, stops the listener, flushes the
    /// Redis writes. Idempotent.
    ///
    /// Every thread that changes tasks (and so wakes the listener: the subscriber, the maintenance thread's counter
    /// reads and resource samples, the preview thread attaching a finished preview) is joined before the listener
    /// stops: a wake after that would reach a libwebsockets context that `Listener.stop()` is destroying or has
    /// freed (lws_cancel_service on it from the maintenance thread was seen with the destroy slowed down; see
    /// tests/c/close_stress.c). The listener then fans out these last changes before it closes the connections.
    func close() {
        ForkRegistry.remove(self)
        storage?.stopSubscriber()
        maintenance?.stop()
        maintenance = nil
        previews?.stop()
        for id in counterTasks.withLock({ Array($0) }) {
            try? detachCounter(id: id)
        }
        listener?.stop()
        // Last: the counters' final values above are among what is flushed.
        storage?.stopWriter()
        if let dir = ownedPreviewDir {
            removeFolder(dir)
            ownedPreviewDir = nil
        }
        // After the counters' last reads, so the streams deliver the final states before they end.
        watchers.finishAll()
    }

    /// Removes the engine's own temporary preview folder and the files in it.
    private func removeFolder(_ dir: String) {
        guard let handle = opendir(dir) else { return }
        while let entry = readdir(handle) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            if name != "." && name != ".." { unlink(dir + "/" + name) }
        }
        closedir(handle)
        rmdir(dir)
    }

    deinit {
        ForkRegistry.remove(self)
        storage?.stopSubscriber()
        maintenance?.stop()
        previews?.stop()
        listener?.stop()
        storage?.stopWriter()
    }

    // MARK: - Validation

    static func isValidId(_ id: String) -> Bool {
        (try? validateId(id)) != nil
    }

    /// Task and batch ids: 1-256 printable characters (SPEC §14): no control characters, and none of the invisible
    /// or unassigned ones an id could hide in a dashboard or a log (format characters such as bidi overrides,
    /// zero-width spaces and BOMs, line and paragraph separators, private-use and unassigned code points). The
    /// zero-width joiner and non-joiner stay allowed: emoji sequences and some scripts need them.
    static func validateId(_ id: String, what: String = "task id") throws {
        var count = 0
        for scalar in id.unicodeScalars {
            count += 1
            let kind: String?
            if scalar.value < 0x20 || (0x7f...0x9f).contains(scalar.value) {
                kind = "control character"
            } else if scalar.value < 0x80 || scalar.value == 0x200C || scalar.value == 0x200D {
                kind = nil
            } else {
                switch scalar.properties.generalCategory {
                case .format: kind = "invisible format character"
                case .lineSeparator, .paragraphSeparator: kind = "line or paragraph separator"
                case .privateUse: kind = "private-use character"
                case .unassigned: kind = "unassigned code point"
                default: kind = nil
                }
            }
            if let kind {
                let hex = String(scalar.value, radix: 16, uppercase: true)
                throw EngineError.invalidArgument("\(what) contains \(kind) U+\(String(repeating: "0", count: max(0, 4 - hex.count)))\(hex); "
                    + "ids are 1-256 printable characters")
            }
        }
        guard count >= 1 else { throw EngineError.invalidArgument("\(what) is empty; ids are 1-256 printable characters") }
        guard count <= 256 else {
            throw EngineError.invalidArgument("\(what) is \(count) characters long; ids are 1-256 printable characters")
        }
    }

    // MARK: - Task access

    /// Runs `body` on the task under its shard lock.
    /// - Parameters:
    ///   - key: the task's key.
    ///   - describe: the id for messages, computed only on error.
    ///   - isUpdate: count the call as an update (accepted, or invalid when `body` throws).
    ///   - forReading: a finished task past its retention is treated as gone (and dropped).
    func withTask<R>(_ key: TaskKey, describe: () throws -> String, isUpdate: Bool = true, forReading: Bool = false,
                             _ body: (TaskRecord) throws -> R) throws -> R {
        let now = forReading ? clock.now() : 0
        let result: R? = try table.shard(for: key).withLock { shard in
            guard let task = shard.tasks[key] else { return nil }
            if forReading && task.isExpired(now: now, retention: config.retentionSeconds) {
                return nil
            }
            guard isUpdate else { return try body(task) }
            // A task leaving its queue, or finishing, changes the line the queued tasks see. Told under the shard
            // lock, so that the board sees a task's changes in their order (the board lock is taken inside shard
            // locks only, never the other way round). Not in a `defer`: that costs a call on every update.
            let before = task.status
            do {
                let seqBefore = task.seq
                let r = try body(task)
                shard.updates += 1
                if task.seq != seqBefore { noteChanged(task) }
                shard.latestEvent = max(shard.latestEvent, task.updatedAt)
                if task.status != before { statusChanged(task) }
                return r
            } catch {
                shard.invalidUpdates += 1
                logRejected(task, error, at: clock.now())
                if task.status != before { statusChanged(task) }
                throw error
            }
        }
        guard let result else {
            if isUpdate { misses.add(1, ordering: .relaxed) }
            throw try unknownTask(describe(), logged: isUpdate)
        }
        return result
    }

    /// The error for task `id`, which this engine does not hold (`.invalidArgument` when `id` is no valid id).
    /// `logged`: an update, rejected and logged as such (`logRejectedUnknown`).
    private func unknownTask(_ id: String, logged: Bool) throws -> EngineError {
        try EngineCore.validateId(id)
        let error = EngineError.notFound("no task \"\(id)\" (never created, or expired after retention_seconds)")
        if logged { logRejectedUnknown(error) }
        return error
    }

    /// SPEC §5: an invalid update is counted and logged. It goes into the task's log as a warning (shown by `logs`,
    /// the dashboard, `task.log`), at most one entry a second per task, which says how many more were rejected
    /// since the previous one; the caller still gets the error code. Under the task's shard lock.
    @inline(never)
    func logRejected(_ task: TaskRecord, _ error: Error, at now: Double) {
        guard let more = task.rejectLog.admit(at: now) else { return }
        let why = (error as? EngineError).map { "\(EngineError.statusName($0.status)): \($0.message)" } ?? "\(error)"
        let entry = task.log(.warning, "rejected update (\(why))" + (more > 0 ? "; \(more) more rejected since the last such entry" : ""),
                             at: max(now, task.lastTimestamp), advancesTime: false)
        if let writer = storage?.writer, !task.isMirror { writer.noteChange(task, urgent: false) }
        listener?.noteLog(taskId: task.id, entry: entry)
    }

    /// A call rejected outside `withTask`'s update path (bad event data, a log entry, a preview or a step counter
    /// refused): counted here (withTask counts the rest) and logged in the task's log when the task exists, else on
    /// standard error like an update of an unknown task.
    private func rejectedBeforeTask(id: String, _ error: Error) {
        misses.add(1, ordering: .relaxed)
        let key = TaskKey(owning: id)
        let held = table.shard(for: key).withLock { shard -> Bool in
            guard let task = shard.tasks[key] else { return false }
            logRejected(task, error, at: clock.now())
            return true
        }
        if !held, let error = error as? EngineError { logRejectedUnknown(error) }
    }

    /// Runs a runner call that reaches its task without recording a change of its own (`withTask(isUpdate:
    /// false)`), so that a refusal is counted and logged as a refused update is.
    private func countingRefusal<R>(id: String, _ body: () throws -> R) throws -> R {
        do {
            return try body()
        } catch {
            rejectedBeforeTask(id: id, error)
            throw error
        }
    }

    /// An update of a task this engine does not hold has no task log: it is logged on standard error (a JSON line,
    /// at most one a second for the whole engine, saying how many more there were).
    private func logRejectedUnknown(_ error: EngineError) {
        let now = clock.now()
        guard let more = unknownRejects.withLock({ $0.admit(at: now) }) else { return }
        var fields = [("error", "\(EngineError.statusName(error.status))"), ("message", error.message)]
        if more > 0 { fields.append(("more_since_last", String(more))) }
        EngineLog.write("warning", "update_rejected", fields)
    }

    /// Tells the queue board that a task changed status. Called under the task's shard lock.
    @inline(never)
    func statusChanged(_ task: TaskRecord) {
        if let line = task.queueLine { queues.moved(task.id, key: line, to: task.status) }
    }

    func withTask<R>(id: String, isUpdate: Bool = true, forReading: Bool = false,
                             _ body: (TaskRecord) throws -> R) throws -> R {
        try withTask(TaskKey(owning: id), describe: { id }, isUpdate: isUpdate, forReading: forReading, body)
    }

    // MARK: - Tasks

    /// Creates a task (or, with `options.resume`, keeps an existing one).
    /// - Throws: `.invalidArgument` (ids), `.exists`, `.json`, `.range` (timestamp).
    func createTask(id: String, templateId: String, category: String?, options: TaskOptions) throws {
        try EngineCore.validateId(id)
        guard !templateId.isEmpty else { throw EngineError.invalidArgument("template_id is empty") }
        let stages = templates.withLock { $0[templateId] } ?? CategoryDefaults.stages(for: category)
        let now = clock.now()
        if let ts = options.timestamp, !(ts.isFinite && ts >= 0) {
            throw EngineError.range("timestamp \(ts) is not a valid epoch time in seconds")
        }
        let key = TaskKey(owning: id)
        // A restarted runner's task that this engine does not hold: Redis has it (read off the update path).
        let restored = options.resume && storage != nil && !holdsTask(key) ? storedRecord(id: id) : nil
        let created: Bool = try table.shard(for: key).withLock { shard in
            if let existing = shard.tasks[key], !existing.isExpired(now: now, retention: config.retentionSeconds) {
                guard options.resume else {
                    throw EngineError.exists("task \"\(id)\" already exists; pass {\"resume\": true} in options_json to reopen it")
                }
                if !existing.status.isTerminal {
                    existing.markResumed(at: try existing.resolveTimestamp(explicit: options.timestamp, now: now))
                    noteChanged(existing)
                }
                return false
            }
            if let restored {
                if !restored.status.isTerminal {
                    restored.markResumed(at: try restored.resolveTimestamp(explicit: options.timestamp, now: now))
                }
                shard.tasks[key] = restored
                shard.latestEvent = max(shard.latestEvent, restored.updatedAt)
                noteChanged(restored)
                return true
            }
            let task = TaskRecord(
                id: id, key: key, templateId: templateId, category: category, quality: options.quality,
                batchId: options.batchId, resourceConfig: options.resourceConfig, metadata: options.metadata,
                stages: stages, timestamp: options.timestamp ?? now)
            shard.tasks[key] = task
            shard.latestEvent = max(shard.latestEvent, task.updatedAt)
            if let line = task.queueLine { queues.enqueue(id, key: line, created: task.createdAt) }
            noteChanged(task)
            return true
        }
        if created, let batch = restored?.batchId ?? options.batchId { noteBatchMember(batch: batch, id: id) }
    }

    /// Whether the table holds a task under `key` (expired or not).
    func holdsTask(_ key: TaskKey) -> Bool {
        table.shard(for: key).withLock { $0.tasks[key] != nil }
    }

    func noteBatchMember(batch: String, id: String) {
        batches.withLock { all in
            if all[batch]?.contains(id) != true { all[batch, default: []].append(id) }
        }
    }

    /// The hot path: `progress_update` with the id borrowed from the caller.
    /// `withTask` spelled out without closures: a closure's captured context costs retains of the engine, which
    /// two threads updating two tasks then fight over (measured 2x per call). Same bookkeeping as `withTask`.
    func update(key: TaskKey, describe: () throws -> String, step: Int64, total: Int64, message: MessageArgument) throws {
        let now = clock.now()
        let shard = table.shard(for: key)
        shard.lock()
        guard let task = shard.unsafeValue.tasks[key] else {
            shard.unlock()
            misses.add(1, ordering: .relaxed)
            throw try unknownTask(describe(), logged: true)
        }
        let before = task.status, seqBefore = task.seq
        do {
            try EngineCore.applyStep(task, step: step, total: total, message: message, at: max(now, task.lastTimestamp))
        } catch {
            shard.unsafeValue.invalidUpdates += 1
            logRejected(task, error, at: now)
            shard.unlock()
            throw error
        }
        shard.unsafeValue.updates += 1
        if task.seq != seqBefore { noteChanged(task) }
        if task.updatedAt > shard.unsafeValue.latestEvent { shard.unsafeValue.latestEvent = task.updatedAt }
        if task.status != before { statusChanged(task) }
        shard.unlock()
    }

    /// A step reported directly (not through the task's counter). Called under the shard lock.
    @inline(__always)
    private static func applyStep(_ task: TaskRecord, step: Int64, total: Int64, message: MessageArgument, at ts: Double) throws {
        try task.applyStep(step: step, total: total, message: message, at: ts)
        // A direct update supersedes what an attached counter held, so the counter is not applied again.
        if var counter = task.counter {
            (counter.lastStep, counter.lastTotal) = counter.read()
            task.counter = counter
        }
    }

    func updateStage(id: String, stage: Int, status: StageStatus, progress: Double, message: MessageArgument) throws {
        let now = clock.now()
        let finished: Bool = try withTask(id: id) { task in
            let ts = max(now, task.lastTimestamp)
            // Steps the runner left in the task's counter came before this change: they are applied first, to the
            // stage they were reported for. A failing stage fails the task: its counter is then released.
            let valid = stage >= 0 && stage < task.stages.count && progress >= 0 && progress <= 1
            if valid && !task.status.isTerminal && task.counter != nil {
                if status == .failed { readCounterOneLastTime(task, at: ts) } else { pollCounter(task, at: ts) }
            }
            try task.updateStage(stage, status: status, progress: progress, message: message, at: ts)
            return task.status.isTerminal
        }
        if finished { counterTasks.withLock { _ = $0.remove(id) } }
    }

    /// A runner event (SPEC §5): see `progress_event` in the header.
    func event(id: String, name: String, dataJSON: String?) throws {
        events.add(1, ordering: .relaxed)
        let (event, explicit): (RunnerEvent, Double?)
        do {
            (event, explicit) = try RunnerEvent.parse(name: name, dataJSON: dataJSON)
        } catch {
            rejectedBeforeTask(id: id, error)
            throw error
        }
        let now = clock.now()
        switch event {
        case let .progress(step, total, message, previewPath):
            let previewFile: String? = try withTask(id: id) { task in
                try EngineCore.applyStep(task, step: step, total: total, message: message.map(MessageArgument.string) ?? .none,
                              at: try task.resolveTimestamp(explicit: explicit, now: now))
                return previewPath == nil ? nil : previewDue(task)
            }
            // The runner's PNG is decoded on the preview thread, not here.
            if let previewPath, let previewFile {
                submitPreview(PreviewJob(taskId: id, fileName: previewFile, source: .file(previewPath)))
            }
        case let .log(level, message):
            try log(id: id, level: level, message: message, timestamp: explicit)
        case let .resources(usage):
            try withTask(id: id) { task in
                try task.setResources(usage, fromRunner: true, at: try task.resolveTimestamp(explicit: explicit, now: now))
            }
        case .complete:
            try complete(id: id, timestamp: explicit)
        case let .error(message):
            try fail(id: id, error: message, timestamp: explicit)
        case let .stage(name, data):
            let isStage = try withTask(id: id, isUpdate: false) { task in
                task.stages.contains(where: { $0.definition.name == name })
            }
            guard isStage else {
                return try log(id: id, level: .debug, message: "unknown event \"\(name)\" ignored", timestamp: explicit)
            }
            let progress: Double?, message: String?
            do {
                (progress, message) = try RunnerEvent.stageArguments(name: name, data: data)
            } catch {
                rejectedBeforeTask(id: id, error)
                throw error
            }
            try withTask(id: id) { task in
                let ts = try task.resolveTimestamp(explicit: explicit, now: now)
                catchUpCounter(task, at: ts, notify: false)  // the runner's steps came before this stage change
                try task.enterStage(named: name, progress: progress, message: message.map(MessageArgument.string) ?? .none,
                                    at: ts)
            }
        }
    }

    func log(id: String, level: LogLevel, message: String, timestamp: Double? = nil) throws {
        let now = clock.now()
        logCount.add(1, ordering: .relaxed)
        let entry = try countingRefusal(id: id) { try withTask(id: id, isUpdate: false) { task in
            let ts = try task.resolveTimestamp(explicit: timestamp, now: now)
            catchUpCounter(task, at: ts, notify: true)  // so the entry names the stage the runner is in
            let entry = task.log(level, message, at: ts)
            if let writer = storage?.writer, !task.isMirror { writer.noteChange(task, urgent: false) }
            return entry
        } }
        listener?.noteLog(taskId: id, entry: entry)
    }

    // MARK: - Fan-out (called by the listener) and write-through

    /// A task changed (its seq moved): queue it for the listener and, unless it mirrors another engine's task,
    /// for the Redis writer. Under the shard lock.
    @inline(__always)
    func noteChanged(_ task: TaskRecord) {
        if let listener { EngineCore.noteChange(task, listener) }
        if watchers.isActive { noteWatchers(task) }
        noteWriteOnly(task)
    }

    /// Out of line: only with a `changes(of:)` stream open, and the update path stays small without one.
    @inline(never)
    private func noteWatchers(_ task: TaskRecord) {
        watchers.note(task.id)
    }

    /// A change for Redis only (the listener sends it with the task's next change). Under the shard lock.
    @inline(__always)
    func noteWriteOnly(_ task: TaskRecord) {
        if let writer = storage?.writer, !task.isMirror { writer.noteChange(task, urgent: task.lastChangeUrgent) }
    }

    /// Queues a changed task for the listener, at most once until the listener takes it; an urgent change
    /// (stage, terminal, created) queues it again so it is not held back by the throttle. Under the shard lock.
    @inline(__always)
    private static func noteChange(_ task: TaskRecord, _ listener: Listener) {
        let flags = task.fanoutFlags
        if task.lastChangeUrgent {
            // An urgent state still unsent is kept for the listener before this change moves past it.
            if flags & 2 != 0, let earlier = task.urgentState, task.heldUrgent.count < EngineCore.maxHeldUrgent {
                task.heldUrgent.append(earlier)
            }
            task.urgentState = TaskSnapshot(task)
        }
        if flags & 1 == 0 {
            task.fanoutFlags = task.lastChangeUrgent ? 3 : 1
            listener.noteChange(taskId: task.id)
        } else if task.lastChangeUrgent && flags & 2 == 0 {
            task.fanoutFlags = flags | 2
            listener.noteChange(taskId: task.id)
        }
    }

    /// Urgent states kept per task while the listener has not taken them (a runner stuck in a loop of resumes
    /// cannot grow it further; stage changes are bounded by the stages).
    static let maxHeldUrgent = 64

    /// What the listener should do with a queued task now.
    enum FanoutDecision {
        /// Send `held` (earlier urgent states, oldest first), then this state, to the task's subscribers.
        case send(TaskSnapshot, urgent: Bool, held: [TaskSnapshot])
        /// Throttled: look again at this monotonic time.
        case later(Double)
        /// Nothing to send (already taken, nobody watching, or the task is gone).
        case nothing
    }

    /// Takes a queued task for fan-out unless the throttle holds it back.
    /// - Parameters:
    ///   - now: monotonic seconds.
    ///   - throttle: minimum seconds between two fan-outs of a non-urgent change.
    ///   - watched: whether anyone subscribes to the task (no snapshot is taken otherwise).
    func takeFanout(id: String, now: Double, throttle: Double, watched: Bool) -> FanoutDecision {
        let key = TaskKey(owning: id)
        return table.shard(for: key).withLock { shard in
            guard let task = shard.tasks[key], task.fanoutFlags & 1 != 0 else { return .nothing }
            let urgent = task.fanoutFlags & 2 != 0
            if !urgent && now - task.lastFanoutAt < throttle { return .later(task.lastFanoutAt + throttle) }
            task.fanoutFlags = 0
            task.lastFanoutAt = now
            let held = task.heldUrgent
            if !held.isEmpty { task.heldUrgent = [] }
            task.urgentState = nil
            return watched ? .send(TaskSnapshot(task), urgent: urgent, held: held) : .nothing
        }
    }

    /// Tasks a `"*"` subscription reads from Redis at most (the newest written).
    static let maxStoredWildcardTasks = 1000

    /// Every task's current state (for a "*" subscription and the dashboard).
    func allSnapshots() -> [TaskSnapshot] {
        let now = clock.now()
        var out: [TaskSnapshot] = []
        for shard in table.allShards {
            shard.withLock { state in
                for task in state.tasks.values where !task.isExpired(now: now, retention: config.retentionSeconds) {
                    out.append(TaskSnapshot(task))
                }
            }
        }
        // With Redis, "*" is every task of the fleet: those this engine does not hold (a listener just started,
        // other engines' finished tasks) come from the task index, newest first, states read in one round trip.
        if let storage {
            let held = Set(out.map(\.id))
            let ids = storage.recentTaskIds(limit: EngineCore.maxStoredWildcardTasks, retention: config.retentionSeconds)
                .filter { !held.contains($0) }
            let states = storage.stateJSONs(ids)
            for id in ids {
                guard let text = states[id], let stored = try? StoredTask.parse(text) else { continue }
                out.append(TaskSnapshot(TaskRecord(restoring: stored)))
            }
        }
        let time = eventTime()
        for i in out.indices { out[i].eta = estimate(out[i], now: time) }
        return out.sorted { $0.createdAt < $1.createdAt }
    }

    func complete(id: String, timestamp: Double? = nil) throws {
        let now = clock.now()
        let record: CompletionRecord = try withTask(id: id) { task in
            let ts = try task.resolveTimestamp(explicit: timestamp, now: now)
            readCounterOneLastTime(task, at: ts)
            try task.complete(at: ts)
            return CompletionRecord(completed: task, at: ts)
        }
        counterTasks.withLock { _ = $0.remove(id) }
        completions.add(record)
        storage?.persistCompletion(record)
    }

    func fail(id: String, error: String?, timestamp: Double? = nil) throws {
        let now = clock.now()
        try withTask(id: id) { task in
            let ts = try task.resolveTimestamp(explicit: timestamp, now: now)
            readCounterOneLastTime(task, at: ts)
            try task.fail(error: error, at: ts)
        }
        counterTasks.withLock { _ = $0.remove(id) }
    }

    func cancel(id: String, reason: String?) throws {
        let now = clock.now()
        try withTask(id: id) { task in
            let ts = max(now, task.lastTimestamp)
            readCounterOneLastTime(task, at: ts)
            try task.cancel(reason: reason, at: ts)
        }
        counterTasks.withLock { _ = $0.remove(id) }
    }

    // MARK: - Previews

    /// The preview due for `task` now, if any. Under the shard lock.
    private func previewDue(_ task: TaskRecord) -> String? {
        guard previews != nil else { return nil }
        return task.previewDue(milestones: config.previewMilestones, everySteps: config.previewEverySteps,
                               fileStem: EngineCore.fileStem(task.id, created: task.createdAt))
    }

    /// A file-name-safe, collision-free stem for a task: its id's safe characters (up to 48), a hash of the
    /// id, and its creation time in milliseconds (an id reused after expiry gets new names, so a cached
    /// preview is never stale).
    static func fileStem(_ id: String, created: Double) -> String {
        var safe = ""
        for scalar in id.unicodeScalars where safe.unicodeScalars.count < 48 {
            let v = scalar.value
            let ok = (48...57).contains(v) || (65...90).contains(v) || (97...122).contains(v) || v == 45 || v == 95
            safe.unicodeScalars.append(ok ? scalar : "_")
        }
        let hash = TaskKey(owning: id).hash
        let hex = String(hash & 0xffff_ffff, radix: 16)
        let millis = String(Int64((created * 1000).rounded()), radix: 36)
        return safe + "-" + String(repeating: "0", count: 8 - hex.count) + hex + "-" + millis
    }

    /// `progress_preview_due`: whether `previewPixels` called now would take a preview (`TaskRecord.duePreview`,
    /// after the steps still in an attached counter, as `previewPixels` sees them). Nothing is copied or marked.
    /// - Parameters:
    ///   - key: the task's key (borrowed from the caller is fine).
    ///   - describe: the id for messages, computed only on error.
    /// - Returns: false for a finished task, which takes no previews.
    /// - Throws: `.notFound`, `.invalidArgument` (id).
    func previewIsDue(key: TaskKey, describe: () throws -> String) throws -> Bool {
        let now = clock.now()
        return try withTask(key, describe: describe, isUpdate: false) { task in
            guard previews != nil, !task.status.isTerminal else { return false }
            catchUpCounter(task, at: max(now, task.lastTimestamp), notify: true)
            return task.duePreview(milestones: config.previewMilestones, everySteps: config.previewEverySteps) != nil
        }
    }

    /// `progress_preview_pixels`: when a preview is due, copies the pixels (the only work on the caller's
    /// thread) and queues them for the preview thread; otherwise returns at once.
    func previewPixels(id: String, pixels: UnsafePointer<UInt8>, width: Int, height: Int, stride: Int, channels: Int) throws {
        try countingRefusal(id: id) {
            try offerPreview(id: id, pixels: pixels, width: width, height: height, stride: stride, channels: channels)
        }
    }

    private func offerPreview(id: String, pixels: UnsafePointer<UInt8>, width: Int, height: Int, stride: Int,
                              channels: Int) throws {
        guard width > 0, height > 0, width <= 65536, height <= 65536 else {
            throw EngineError.invalidArgument("width and height must be within 1...65536, got \(width)x\(height)")
        }
        guard [1, 3, 4].contains(channels) else {
            throw EngineError.invalidArgument("channels must be 1 (gray), 3 (RGB) or 4 (RGBA), got \(channels)")
        }
        let rowBytes = width * channels
        guard stride >= rowBytes else {
            throw EngineError.invalidArgument("stride \(stride) is less than width x channels (\(rowBytes))")
        }
        guard let worker = previews else { return }
        let now = clock.now()
        let due: String? = try withTask(id: id, isUpdate: false) { task in
            guard !task.status.isTerminal else {
                throw EngineError.state("task \"\(id)\" is \(task.status.name) and accepts no further previews")
            }
            // Steps still in the task's counter count: the runner's latest step may have crossed a milestone.
            catchUpCounter(task, at: max(now, task.lastTimestamp), notify: true)
            return previewDue(task)
        }
        guard let fileName = due else { return }
        let buffer = worker.buffer(bytes: rowBytes * height)
        if stride == rowBytes {
            buffer.pointer.update(from: pixels, count: rowBytes * height)
        } else {
            for y in 0..<height {
                (buffer.pointer + y * rowBytes).update(from: pixels + y * stride, count: rowBytes)
            }
        }
        submitPreview(PreviewJob(taskId: id, fileName: fileName,
                                 source: .pixels(buffer, width: width, height: height, channels: channels)))
    }

    private func submitPreview(_ job: PreviewJob) {
        guard let worker = previews, worker.submit(job) else {
            previewsDropped.add(1, ordering: .relaxed)
            try? log(id: job.taskId, level: .warning,
                     message: "preview \(job.fileName) skipped: the preview encoder is busy with earlier ones")
            return
        }
    }

    /// On the preview thread, once a job is done.
    private func previewFinished(_ job: PreviewJob, _ result: Result<Void, EngineError>) {
        switch result {
        case .success:
            previewsWritten.add(1, ordering: .relaxed)
            let attached = (try? withTask(id: job.taskId) { task -> Bool in
                // Stamped at the task's latest event: a background change must not move the runner's timeline
                // (a replay's next explicit timestamp would look like it went backwards).
                task.setPreview(file: job.fileName, url: Routes.previewsPrefix + job.fileName, at: task.lastTimestamp)
                return true
            }) ?? false
            // The task expired while its preview was being made: the file has no owner.
            if !attached, let dir = previewDirectory { unlink(dir + "/" + job.fileName) }
        case let .failure(error):
            previewsFailed.add(1, ordering: .relaxed)
            try? log(id: job.taskId, level: .warning, message: "preview \(job.fileName) failed: \(error.message)")
        }
    }

    // MARK: - Resources

    /// Samples this process's CPU, memory and GPU and fills the executing tasks' `resource_usage` (fields
    /// a runner reported itself are left alone). Called by the maintenance thread every resource_interval_ms.
    func sampleResources(now: Double) {
        guard let usage = resourceSampler.withLock({ $0.sample(now: monotonicNow()) }) else { return }
        let quiet = EngineCore.quietRunnerSeconds(resourceIntervalMs: config.resourceIntervalMs)
        for shard in table.allShards {
            shard.withLock { state in
                // Not a mirror: its process is another engine's, which samples and publishes it itself, and a
                // sample of this process would move the mirror's seq past the runner's states (they'd be ignored).
                for task in state.tasks.values where task.status == .executing && !task.isMirror {
                    let seq = task.seq, runnerAt = task.updatedAt
                    // Stamped at the task's latest event, like a finished preview: never ahead of the runner.
                    try? task.setResources(usage, fromRunner: false, at: task.lastTimestamp)
                    guard task.seq != seq else { continue }
                    if now - runnerAt >= quiet {
                        noteChanged(task)
                    } else {
                        // The runner is reporting: its next update carries these figures to the subscribers. Sent
                        // alone, the sample would open the task's throttle window and hold that update back for up
                        // to throttle_ms. Redis gets it as usual.
                        noteWriteOnly(task)
                    }
                }
            }
        }
    }

    /// How long a task must go without an update of its own before a resource sample is fanned out alone.
    static func quietRunnerSeconds(resourceIntervalMs: Int) -> Double {
        max(2, 2 * Double(resourceIntervalMs) / 1000)
    }

    // MARK: - Step counters

    func attachCounter(id: String, pointer: UnsafePointer<CLongLong>) throws {
        try countingRefusal(id: id) { try withTask(id: id, isUpdate: false) { task in
            guard !task.status.isTerminal else {
                throw EngineError.state("task \"\(id)\" is \(task.status.name); a counter would never be read")
            }
            // Start from "nothing seen" so values written before attaching are applied.
            task.counter = CounterBinding(pointer: pointer, lastStep: -1, lastTotal: -1)
        } }
        counterTasks.withLock { _ = $0.insert(id) }
        maintenance?.wake()
    }

    func detachCounter(id: String) throws {
        let now = clock.now()
        let key = TaskKey(owning: id)
        // The last read is applied like a maintenance round's: a step it finds is an update of the task, counted,
        // fanned out and written through (it was once applied silently, so Redis and watchers never saw it unless
        // another change of the task followed).
        let had: Bool? = table.shard(for: key).withLock { shard in
            guard let task = shard.tasks[key] else { return nil }
            guard task.counter != nil else { return false }
            let before = task.status, seq = task.seq
            readCounterOneLastTime(task, at: max(now, task.lastTimestamp))
            if task.seq != seq {
                shard.updates += 1
                shard.latestEvent = max(shard.latestEvent, task.updatedAt)
                noteChanged(task)
            }
            if task.status != before { statusChanged(task) }
            return true
        }
        counterTasks.withLock { _ = $0.remove(id) }
        guard let had else { throw try unknownTask(id, logged: false) }
        guard had else { throw EngineError.notFound("task \"\(id)\" has no counter attached") }
    }

    /// Applies the counter's values if they changed; returns whether it did. A pair that cannot be applied (e.g. a
    /// step past total_steps) is skipped and counted in `invalid_updates`, as progress_update would count it; so is
    /// a pair read between the caller's two stores, which the next read applies once finished. Called under the
    /// shard lock.
    @discardableResult
    private func pollCounter(_ task: TaskRecord, at ts: Double) -> Bool {
        guard var counter = task.counter else { return false }
        let (step, total) = counter.read()
        guard step != counter.lastStep || total != counter.lastTotal else { return false }
        counter.lastStep = step
        counter.lastTotal = total
        task.counter = counter
        do {
            try task.applyStep(step: step, total: total, message: .none, at: ts)
            return true
        } catch {
            misses.add(1, ordering: .relaxed)
            logRejected(task, error, at: clock.now())
            return false
        }
    }

    /// Applies steps still in the task's counter before something that must come after them (a stage change, a
    /// log entry, a read): the runner wrote them first. `notify`: the caller is not an update that announces the
    /// change itself. Under the shard lock.
    @inline(__always)
    private func catchUpCounter(_ task: TaskRecord, at ts: Double, notify: Bool) {
        if task.counter != nil, !task.status.isTerminal, pollCounter(task, at: ts), notify { noteChanged(task) }
    }

    private func readCounterOneLastTime(_ task: TaskRecord, at ts: Double) {
        if task.counter != nil, !task.status.isTerminal { pollCounter(task, at: ts) }
        task.counter = nil
    }

    // MARK: - Maintenance

    /// One round of the maintenance thread: poll counters, sweep expired tasks once a second.
    /// - Returns: seconds until the next round.
    @discardableResult
    func maintenanceRound() -> Double {
        let ids = counterTasks.withLock { Array($0) }
        let now = clock.now()
        for id in ids {
            let key = TaskKey(owning: id)
            table.shard(for: key).withLock { shard in
                guard let task = shard.tasks[key] else { return }
                let before = task.status
                if pollCounter(task, at: max(now, task.lastTimestamp)) {
                    shard.updates += 1
                    shard.latestEvent = max(shard.latestEvent, task.updatedAt)
                    noteChanged(task)
                }
                // A counter's first steps move a queued task to its main stage.
                if task.status != before { statusChanged(task) }
            }
        }
        if resourceSampler.withLock({ $0.isDue(now: monotonicNow(), intervalMs: config.resourceIntervalMs) }) {
            sampleResources(now: now)
        }
        let sweepDue = lastSweep.withLock { last in
            guard now - last >= 1 else { return false }
            last = now
            return true
        }
        if sweepDue { sweep(now: now) }
        let idle = min(1, Double(config.resourceIntervalMs) / 1000)
        guard !ids.isEmpty else { return idle }
        return max(0.001, min(Double(config.throttleMs), 50, idle * 1000) / 1000)
    }

    /// Drops finished tasks older than `retention_seconds`.
    func sweep(now: Double) {
        var gone: [(String, String?)] = []
        var files: [String] = []
        for shard in table.allShards {
            shard.withLock { state in
                for task in state.tasks.values where task.isExpired(now: now, retention: config.retentionSeconds) {
                    state.tasks[task.key] = nil
                    gone.append((task.id, task.batchId))
                    files += task.previewFiles
                }
            }
        }
        // Deleted after the shard locks are released: updates of a shard never wait on the file system.
        if let dir = previewDirectory {
            for file in files { unlink(dir + "/" + file) }
        }
        guard !gone.isEmpty else { return }
        purged.add(gone.count, ordering: .relaxed)
        listener?.noteExpired(taskIds: gone.map { $0.0 })
        let expiredIds = Set(gone.map { $0.0 })
        batches.withLock { all in
            for batch in Set(gone.compactMap { $0.1 }) {
                all[batch]?.removeAll { expiredIds.contains($0) }
                if all[batch]?.isEmpty == true { all[batch] = nil }
            }
        }
    }

    // MARK: - Templates and ETA

    func registerTemplate(id: String, stagesJSON: String) throws {
        guard !id.isEmpty else { throw EngineError.invalidArgument("template_id is empty") }
        let stages = try StageDefinition.parseList(try JSONParser.parse(stagesJSON, context: "stages_json"),
                                                   context: "stages_json of template \"\(id)\"")
        templates.withLock { $0[id] = stages }
        storage?.persistTemplate(id: id, stagesJSON: stagesJSON)
    }

    /// Templates registered through another engine of the fleet (Redis), unless registered here already.
    private func loadStoredTemplates() {
        guard let storage else { return }
        for (id, json) in storage.templates() {
            guard let value = try? JSONParser.parse(json, context: "stored template"),
                  let stages = try? StageDefinition.parseList(value, context: "stored template \"\(id)\"") else { continue }
            templates.withLock { if $0[id] == nil { $0[id] = stages } }
        }
    }

    /// The fleet's completion records (Redis): a restarted engine, or a listener of the fleet, predicts ETAs from
    /// the history at once instead of starting from none. Records that do not parse are skipped.
    private func loadStoredCompletions() {
        guard let storage else { return }
        for text in storage.completionRecords() {
            if let record = try? CompletionRecord.parse(text, now: 0) { completions.add(record) }
        }
    }

    func recordCompletion(json: String) throws {
        let record = try CompletionRecord.parse(json, now: clock.now())
        completions.add(record)
        storage?.persistCompletion(record)
    }

    // MARK: - Reading

    /// A copy of the task's state with its ETA; from Redis when this engine does not hold it.
    /// - Parameters:
    ///   - id: the task.
    ///   - now: the engine's time (`eventTime()`), when the caller has it already.
    /// - Throws: `.notFound`, `.invalidArgument` (id).
    func snapshot(id: String, now: Double? = nil) throws -> TaskSnapshot {
        var snapshot = try withStoredFallback({
            try withTask(id: id, isUpdate: false, forReading: true) { task in
                // A read right after the runner's step sees it (the counter is otherwise read within throttle_ms).
                catchUpCounter(task, at: max(clock.now(), task.lastTimestamp), notify: true)
                return TaskSnapshot(task)
            }
        },
                                              stored: { _ in storedRecord(id: id).map(TaskSnapshot.init) })
        snapshot.eta = estimate(snapshot, now: now ?? eventTime())
        return snapshot
    }

    /// The engine's time for ETAs: the latest event time of any task. Events rather than the system clock, so
    /// replays with explicit timestamps see their own time; read from every shard (a lock each, no shared
    /// counter on the update path).
    func eventTime() -> Double {
        var latest = 0.0
        for shard in table.allShards { latest = max(latest, shard.withLock { $0.latestEvent }) }
        return latest
    }

    /// The task's ETA from its snapshot and the completion history. Called after the shard lock is released:
    /// the history has its own lock and statistics are cached, so a read costs a few lookups and a little
    /// arithmetic.
    /// - Parameter task: a snapshot of the task.
    /// - Returns: the estimate, nil when nothing is known to base one on (or the task failed or was cancelled).
    func estimate(_ task: TaskSnapshot, now: Double) -> ETAEstimate? {
        predictor(for: task).estimate(task, now: now,
                                      queueStart: task.status == .queued ? queueStart(of: task, now: now) : nil)
    }

    private func predictor(for task: TaskSnapshot) -> ETAPredictor {
        ETAPredictor(
            history: completions.similar(template: task.templateId, quality: task.quality,
                                         resource: task.resourceKey, category: task.category),
            queueHistory: completions.statistics(.resource(template: task.templateId, resource: task.resourceKey)))
    }

    /// Queued tasks ahead whose execution is forecast one by one; the rest count at their mean.
    static let forecastAhead = 64

    /// When a queued task will start, from its line (`QueueBoard`): a worker frees up when the task it runs
    /// completes (that task's own ETA), then takes the next task in line for as long as that one's execution is
    /// predicted to take, until the task's turn comes. While the task waits every worker is busy, so the tasks
    /// executing tell how many workers there are. Times count from the engine's time (`eventTime`).
    /// - Parameters:
    ///   - task: a queued task.
    ///   - now: the engine's time.
    /// - Returns: the forecast start (epoch seconds) and its variance; nil when the task waits in no line, no task
    ///   of its line is executing, or the execution of those ahead cannot be predicted.
    private func queueStart(of task: TaskSnapshot, now: Double) -> (time: Double, variance: Double)? {
        guard let key = task.queueLine,
              let line = queues.line(of: task.id, key: key, limit: EngineCore.forecastAhead) else { return nil }
        func snapshot(_ id: String) -> TaskSnapshot? { try? withTask(id: id, isUpdate: false) { TaskSnapshot($0) } }
        let reference = max(task.updatedAt, now)
        var free: [Double] = [], runningVariance = 0.0
        for id in line.running {
            guard let other = snapshot(id), let eta = predictor(for: other).estimate(other, now: reference) else {
                continue
            }
            free.append(other.updatedAt + eta.seconds)
            runningVariance += eta.deviation * eta.deviation
        }
        guard !free.isEmpty else { return nil }
        let workers = Double(free.count)
        var executions: [(seconds: Double, variance: Double)] = []
        for id in line.ahead {
            if let other = snapshot(id), let execution = predictor(for: other).expectedExecution(other) {
                executions.append(execution)
            }
        }
        if executions.isEmpty && line.aheadCount > 0 { return nil }
        free = free.map { max($0, reference) }
        var variance = runningVariance / workers
        for execution in executions {
            let next = free.indices.min { free[$0] < free[$1] } ?? 0
            free[next] += execution.seconds
            variance += execution.variance / workers
        }
        var start = free.min() ?? reference
        // Tasks ahead beyond those forecast one by one (or without a forecast) take the mean of those that were.
        let unforecast = line.aheadCount - executions.count
        if unforecast > 0 {
            let share = Double(unforecast) / Double(executions.count) / workers
            start += share * executions.map(\.seconds).reduce(0, +)
            variance += share * executions.map(\.variance).reduce(0, +)
        }
        return (start, variance)
    }

    func taskJSON(id: String) throws -> String {
        let snapshot = try snapshot(id: id)
        var w = JSONWriter(capacity: 1024)
        TaskJSON.write(snapshot, to: &w)
        return w.output
    }

    func logsJSON(id: String, since: Double, minLevel: LogLevel) throws -> String {
        var partial = false
        var (entries, dropped): ([LogEntry], Int) = try withStoredFallback({
            try withTask(id: id, isUpdate: false, forReading: true) { task in
                var entries: [LogEntry] = []
                task.logs.forEach { entries.append($0) }
                partial = task.historyGapSeq > 0
                return (entries, task.logs.dropped)
            }
        }, stored: { storage in storage.stateJSON(id) == nil ? nil : storage.logs(id).map { ($0, 0) } })
        // A task this engine restored (a resumed runner) or mirrors holds only the entries since: the earlier
        // ones are in Redis.
        if partial, let stored = storage?.logs(id) {
            let first = entries.first?.timestamp ?? .infinity
            entries = stored.filter { $0.timestamp < first } + entries
        }
        do {
            var w = JSONWriter(capacity: 1024)
            w.beginObject()
            w.key("task_id"); w.string(id)
            w.key("logs"); w.beginArray()
            entries.forEach { entry in
                guard entry.timestamp >= since, entry.level.rawValue >= minLevel.rawValue else { return }
                entry.write(to: &w)
            }
            w.endArray()
            w.key("dropped"); w.integer(dropped)
            w.endObject()
            return w.output
        }
    }

    func historyJSON(id: String, afterSeq: UInt64) throws -> String {
        var partial = false
        let (held, lastSeq): ([HistoryEvent], UInt64) = try withStoredFallback({
            try withTask(id: id, isUpdate: false, forReading: true) { task in
                let events = task.history.newest(while: { _ in true })
                partial = task.historyGapSeq > 0 || (events.first?.seq ?? 1) > 1
                return (events, task.seq)
            }
        }, stored: { storage in
            guard let task = storage.loadTask(id) else { return nil }
            return (storage.streamEvents(id, from: 1) ?? [], task.seq)
        })
        // Events older than memory holds (a restored or mirrored task, or a long one past the ring) come from the
        // Redis stream, as far back as it goes.
        var events = held
        let firstHeld = held.first?.seq ?? (lastSeq + 1)
        if partial, afterSeq + 1 < firstHeld, let older = storage?.streamEvents(id, from: afterSeq + 1, before: firstHeld) {
            events = older + held
        }
        do {
            var w = JSONWriter(capacity: 4096)
            w.beginObject()
            w.key("task_id"); w.string(id)
            w.key("first_seq"); w.integer(events.first?.seq ?? 0)
            w.key("last_seq"); w.integer(lastSeq)
            w.key("events"); w.beginArray()
            events.forEach { e in
                guard e.seq > afterSeq else { return }
                w.beginObject()
                w.key("seq"); w.integer(e.seq)
                w.key("timestamp"); w.timestamp(e.timestamp)
                w.key("type"); w.string(e.type.name)
                w.key("stage"); w.integer(e.stage)
                w.key("progress"); w.number(e.progress)
                w.key("overall_progress"); w.number(e.overallProgress)
                w.key("status"); w.string(e.status.name)
                w.key("message"); w.string(e.message)
                w.endObject()
            }
            w.endArray()
            w.endObject()
            return w.output
        }
    }

    /// The batch's tasks this engine or Redis knows, and the ids it does not.
    /// - Parameter taskIds: the tasks to report; nil for the batch's recorded members.
    /// - Throws: `.invalidArgument` (batch id).
    func batch(batchId: String, taskIds: [String]?) throws -> (found: [TaskSnapshot], missing: [String]) {
        try EngineCore.validateId(batchId, what: "batch_id")
        var ids = taskIds ?? batches.withLock { $0[batchId] ?? [] }
        if taskIds == nil, let storage {
            // Other engines' tasks of the batch, and this engine's own from before a restart.
            let known = Set(ids)
            ids += storage.batchMembers(batchId).filter { !known.contains($0) }
        }
        var found: [TaskSnapshot] = []
        var missing: [String] = []
        let now = eventTime()
        for id in ids {
            // `snapshot` reads a task this engine does not hold from Redis.
            if let snapshot = try? snapshot(id: id, now: now) {
                found.append(snapshot)
            } else {
                missing.append(id)
            }
        }
        return (found, missing)
    }

    /// BatchProgress (SPEC §6); `taskIds` nil means the tasks created with this batch_id.
    func batchJSON(batchId: String, taskIds: [String]?) throws -> String {
        let (found, missing) = try batch(batchId: batchId, taskIds: taskIds)
        let summary = BatchSummary(found)
        var w = JSONWriter(capacity: 1024)
        w.beginObject()
        w.key("batch_id"); w.string(batchId)
        w.key("total_tasks"); w.integer(found.count)
        var counts: [TaskStatus: Int] = [:]
        for t in found { counts[t.status, default: 0] += 1 }
        for status in TaskStatus.all {
            w.key("\(status.name)_tasks"); w.integer(counts[status] ?? 0)
        }
        w.key("counts"); w.beginObject()
        for status in TaskStatus.all {
            w.key(status.name); w.integer(counts[status] ?? 0)
        }
        w.endObject()
        w.key("overall_progress"); w.number(summary.overallProgress)
        w.key("eta"); w.timestamp(summary.eta)
        w.key("tasks"); w.beginObject()
        for t in found {
            w.key(t.id); w.beginObject()
            w.key("status"); w.string(t.status.name)
            w.key("overall_progress"); w.number(t.overallProgress)
            w.key("eta"); w.timestamp(t.etaTime)
            w.endObject()
        }
        w.endObject()
        w.key("missing"); w.beginArray()
        for id in missing { w.string(id) }
        w.endArray()
        w.endObject()
        return w.output
    }

    func etaRecordsJSON(templateId: String, quality: String?) -> String {
        var w = JSONWriter(capacity: 1024)
        w.beginObject()
        w.key("template_id"); w.string(templateId)
        w.key("quality"); w.string(quality)
        w.key("records"); w.beginArray()
        for r in completions.records(template: templateId, quality: quality) { r.write(to: &w) }
        w.endArray()
        w.endObject()
        return w.output
    }

    /// EngineCore counters, for `progress_engine_stats_get` and `/metrics`.
    struct Counters {
        var tasks = 0, updates = 0, invalidUpdates = 0, events = 0, logs = 0, purgedTasks = 0, attachedCounters = 0
        var previewsWritten = 0, previewsFailed = 0, previewsDropped = 0
    }

    func counters() -> Counters {
        var c = Counters()
        for shard in table.allShards {
            shard.withLock { s in
                c.tasks += s.tasks.count
                c.updates += s.updates
                c.invalidUpdates += s.invalidUpdates
            }
        }
        c.invalidUpdates += misses.load(ordering: .relaxed)
        c.events = events.load(ordering: .relaxed)
        c.logs = logCount.load(ordering: .relaxed)
        c.purgedTasks = purged.load(ordering: .relaxed)
        c.attachedCounters = counterTasks.withLock { $0.count }
        c.previewsWritten = previewsWritten.load(ordering: .relaxed)
        c.previewsFailed = previewsFailed.load(ordering: .relaxed)
        c.previewsDropped = previewsDropped.load(ordering: .relaxed)
        return c
    }

    func statsJSON() -> String {
        let c = counters()
        var w = JSONWriter()
        w.beginObject()
        for row in CounterTable.engine {
            w.key(row.stats); w.integer(row.value(c))
        }
        if let m = storage?.metrics {
            for row in CounterTable.redis {
                w.key(row.stats); w.integer(row.value(m))
            }
        }
        w.endObject()
        return w.output
    }
}
