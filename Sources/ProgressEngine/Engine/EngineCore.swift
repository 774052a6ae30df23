import Glibc
import Synchronization

/// One ProgressEngine instance: live task state, templates, batches, ETA history, and the maintenance
/// thread. Every method is safe to call from any thread.
final class EngineCore: @unchecked Sendable {
    let config: EngineConfig
    let clock: any EngineClock
    /// `clock` is the system's: the step path reads it directly rather than through the existential.
    private let clockIsSystem: Bool
    /// The live pace's shortest interval for steps timed by `clock.stepTime()` (which may read in ticks).
    private let stepSampleSpan: Double
    /// Monotonic time for the listener's and the Redis threads' throttles, back-offs and bounds.
    let monotonic: any EngineClock
    let table = TaskTable()
    let templates = Locked<[IdKey: [StageDefinition]]>([:])
    /// batch_id → task ids in creation order.
    let batches = Locked<[IdKey: [String]]>([:])
    /// Ids of tasks with an attached step counter, for the maintenance thread.
    let counterTasks = Locked<Set<IdKey>>([])
    /// Ids of tasks with a cancel request the maintenance thread watches for `cancel_timeout_seconds`.
    let cancelWatch = Locked<Set<IdKey>>([])
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
    /// Where tasks live besides memory: `RedisStorage` (write-through, recovery, the fleet channel) when
    /// `redis_url` is set, else a `MemoryStore`; set once in `init` (and replaced in a forked child's writer).
    private(set) var store: any TaskStore = MemoryStore()
    /// The store's writer, the consumer of the storage feed, read on every change without a call through
    /// `store`; set with it (`init`, `restartInChild`).
    var storeWriter: RedisWriter?
    /// The Swift API's change streams (`Engine.changes(of:)`).
    let watchers = ChangeWatchers()

    /// - Parameters:
    ///   - config: parsed configuration.
    ///   - clock: where time comes from (a `ManualClock` in tests).
    ///   - monotonic: where the listener and the Redis threads read monotonic time.
    ///   - background: start the maintenance thread (tests drive `maintenanceRound()` themselves).
    /// - Throws: `EngineError.config` for a bad listen address or redis_url, `.io` if a thread cannot start or the
    ///   address cannot be bound. An unreachable Redis is no error: the engine retries in the background.
    init(config: EngineConfig, clock: any EngineClock = SystemClock(), monotonic: any EngineClock = MonotonicClock(),
         background: Bool = true) throws {
        if let url = config.redisURL { _ = try RedisURL.parse(url) }
        EngineLog.takesCLines
        self.config = config
        self.clock = clock
        clockIsSystem = clock is SystemClock
        stepSampleSpan = LiveRate.sampleSpan(tick: clock.stepResolution)
        self.monotonic = monotonic
        // Each thread starts only after everything it reads is set (pthread_create orders those writes
        // before the thread's reads): storage, then the listener, then the subscriber feeding the listener,
        // then the maintenance thread, which touches all of them.
        do {
            try startPreviews()
            if let url = config.redisURL {
                store = try RedisStorage(engine: self, urlText: url)
                storeWriter = store.writer
                loadStoredTemplates()
                loadStoredCompletions()
            }
            if let listen = config.listen {
                listener = try Listener(engine: self, address: try ListenAddress.parse(listen))
                try store.startSubscriber(engine: self)
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
        store.stopSubscriber()
        maintenance?.stop()
        maintenance = nil
        previews?.stop()
        for key in counterTasks.withLock({ Array($0) }) {
            try? detachCounter(id: key.id)
        }
        listener?.stop()
        // Last: the counters' final values above are among what is flushed.
        store.stopWriter()
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
        store.stopSubscriber()
        maintenance?.stop()
        previews?.stop()
        listener?.stop()
        store.stopWriter()
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
        // Shard and record borrowed, not retained (two threads on two tasks fought over their reference counts):
        // the table keeps its shards, and `body` runs under the shard's lock, which a removal or a replacement of
        // the record also takes.
        let result: R? = try table.withShard(for: key) { locked in try locked.withLock { shard in
            guard let record = shard.tasks.borrow(key) else { return nil }
            return try record._withUnsafeGuaranteedRef { task -> R? in
                if forReading && task.isExpired(now: now, retention: config.retentionSeconds) {
                    return nil
                }
                guard isUpdate else { return try body(task) }
                // A task leaving its queue, or finishing, changes the line the queued tasks see. Told under the
                // shard lock, so that the board sees a task's changes in their order (the board lock is taken
                // inside shard locks only, never the other way round). Not in a `defer`: that costs a call on
                // every update.
                let before = task.status
                do {
                    let seqBefore = task.seq
                    let r = try body(task)
                    afterChange(task, &shard, seqBefore: seqBefore, statusBefore: before)
                    return r
                } catch {
                    shard.invalidUpdates += 1
                    logRejected(task, error, at: clock.now())
                    if task.status != before { statusChanged(task) }
                    throw error
                }
            }
        } }
        guard let result else {
            if isUpdate { misses.add(1, ordering: .relaxed) }
            throw try unknownTask(describe(), logged: isUpdate)
        }
        return result
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
        try EngineCore.validateNewId(id)
        guard !templateId.isEmpty else { throw EngineError.invalidArgument("template_id is empty") }
        guard !(options.resume && options.reuse) else {
            throw EngineError.invalidArgument("\"resume\" keeps the task under the id and \"reuse\" replaces a "
                + "finished one: give one of them")
        }
        let stages = templates.withLock { $0[IdKey(templateId)] } ?? CategoryDefaults.stages(for: category)
        let now = clock.now()
        if let ts = options.timestamp, !(ts.isFinite && ts >= 0) {
            throw EngineError.range("timestamp \(ts) is not a valid epoch time in seconds")
        }
        let key = TaskKey(owning: id)
        // A restarted runner's task that this engine does not hold: Redis has it (read off the update path).
        let restored = options.resume && !holdsTask(key) ? try storedRecordForResume(id: id) : nil
        let created: Bool = try table.shard(for: key).withLock { shard in
            if let existing = shard.tasks[key], !existing.isExpired(now: now, retention: config.retentionSeconds),
               !(options.reuse && existing.status.isTerminal) {
                guard options.resume else {
                    throw EngineError.exists("task \"\(id)\" already exists" + (existing.status.isTerminal
                        ? "; pass {\"resume\": true} in options_json to reopen it, or {\"reuse\": true} to start it anew"
                        : " and has not finished; pass {\"resume\": true} in options_json to reopen it"))
                }
                if !existing.status.isTerminal {
                    existing.markResumed(at: try existing.resolveTimestamp(explicit: options.timestamp, now: now))
                    noteChanged(existing)
                }
                return false
            }
            if let restored {
                if !restored.status.isTerminal {
                    let ts = try restored.resolveTimestamp(explicit: options.timestamp, now: now)
                    restored.markResumed(at: ts)
                    // A request stored for the task waits for this runner: cancel_timeout_seconds counts from now.
                    restored.cancelRequest?.requestedAt = ts
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
            // One held before under the id (finished and reused, or expired and not purged yet): the listener's
            // clients forget what they were sent of it, before the new one's first change reaches them.
            if shard.tasks[key] != nil { listener?.noteExpired(taskIds: [id]) }
            shard.tasks[key] = task
            shard.latestEvent = max(shard.latestEvent, task.updatedAt)
            if let line = task.queueLine { queues.enqueue(id, key: line, created: task.createdAt) }
            noteChanged(task)
            return true
        }
        if created, let batch = restored?.batchId ?? options.batchId { noteBatchMember(batch: batch, id: id) }
        if created, restored?.cancelRequest != nil { cancelWatch.withLock { _ = $0.insert(IdKey(id)) } }
    }

    /// Whether the table holds a task under `key` (expired or not).
    func holdsTask(_ key: TaskKey) -> Bool {
        table.shard(for: key).withLock { $0.tasks[key] != nil }
    }

    func noteBatchMember(batch: String, id: String) {
        batches.withLock { all in
            let key = IdKey(batch)
            if all[key]?.contains(where: { IdKey.same($0, id) }) != true { all[key, default: []].append(id) }
        }
    }

    /// The hot path: `progress_update` with the id borrowed from the caller, the step timed by the coarse clock.
    func update(key: TaskKey, describe: () throws -> String, step: Int64, total: Int64, message: MessageArgument) throws {
        let now = clockIsSystem ? SystemClock().stepTime() : clock.stepTime()
        let minSpan = stepSampleSpan
        try withTask(key, describe: describe) { task in
            try EngineCore.applyStep(task, step: step, total: total, message: message, at: max(now, task.lastTimestamp),
                                     minSpan: minSpan)
        }
    }

    /// A step reported directly (not through the task's counter). Called under the shard lock.
    @inline(__always)
    private static func applyStep(_ task: TaskRecord, step: Int64, total: Int64, message: MessageArgument, at ts: Double,
                                  minSpan: Double) throws {
        try task.applyStep(step: step, total: total, message: message, at: ts, minSpan: minSpan)
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
        if finished { counterTasks.withLock { _ = $0.remove(IdKey(id)) } }
    }

    /// A runner event (SPEC §5): see `progress_event` in the header.
    func event(id: String, name: String, dataJSON: String?) throws {
        events.add(1, ordering: .relaxed)
        let (event, explicit) = try countingRefusal(id: id) { try RunnerEvent.parse(name: name, dataJSON: dataJSON) }
        let now = clock.now()
        switch event {
        case let .progress(step, total, message, previewPath):
            let previewFile: String? = try withTask(id: id) { task in
                try EngineCore.applyStep(task, step: step, total: total, message: message.map(MessageArgument.string) ?? .none,
                              at: try task.resolveTimestamp(explicit: explicit, now: now), minSpan: 0)
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
            let (progress, message, variant) = try countingRefusal(id: id) {
                try RunnerEvent.stageArguments(name: name, data: data)
            }
            try withTask(id: id) { task in
                let ts = try task.resolveTimestamp(explicit: explicit, now: now)
                catchUpCounter(task, at: ts, notify: false)  // the runner's steps came before this stage change
                try task.enterStage(named: name, progress: progress, message: message.map(MessageArgument.string) ?? .none,
                                    variant: variant, at: ts)
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
            if let storeWriter { ChangeFeed.storage.note(task, urgent: false, to: storeWriter) }
            return entry
        } }
        listener?.noteLog(taskId: id, entry: entry)
    }

    func complete(id: String, timestamp: Double? = nil) throws {
        let now = clock.now()
        let record: CompletionRecord = try withTask(id: id) { task in
            let ts = try task.resolveTimestamp(explicit: timestamp, now: now)
            readCounterOneLastTime(task, at: ts)
            try task.complete(at: ts)
            return CompletionRecord(completed: task, at: ts)
        }
        counterTasks.withLock { _ = $0.remove(IdKey(id)) }
        completions.add(record)
        store.persistCompletion(record)
    }

    func fail(id: String, error: String?, timestamp: Double? = nil) throws {
        let now = clock.now()
        try withTask(id: id) { task in
            let ts = try task.resolveTimestamp(explicit: timestamp, now: now)
            readCounterOneLastTime(task, at: ts)
            try task.fail(error: error, at: ts)
        }
        counterTasks.withLock { _ = $0.remove(IdKey(id)) }
    }

    func cancel(id: String, reason: String?) throws {
        let now = clock.now()
        try withTask(id: id) { task in
            let ts = max(now, task.lastTimestamp)
            readCounterOneLastTime(task, at: ts)
            try task.cancel(reason: reason, at: ts)
        }
        counterTasks.withLock { _ = $0.remove(IdKey(id)) }
    }

    // MARK: - Reading

    /// A copy of the task's state with its ETA; from Redis when this engine does not hold it.
    /// - Parameters:
    ///   - id: the task.
    ///   - now: the engine's time (`eventTime()`), when the caller has it already.
    /// - Throws: `.notFound`, `.invalidArgument` (id).
    func snapshot(id: String, now: Double? = nil) throws -> TaskSnapshot {
        var snapshot = try withStoredFallback({ try heldState(id: id) },
                                              stored: { _ in storedRecord(id: id).map(TaskSnapshot.init) })
        snapshot.eta = estimate(snapshot, now: now ?? eventTime())
        return snapshot
    }

    /// `snapshot(id:now:)` of a task this engine holds; nil for any other (no Redis read).
    func heldSnapshot(id: String, now: Double) -> TaskSnapshot? {
        guard var snapshot = try? heldState(id: id) else { return nil }
        snapshot.eta = estimate(snapshot, now: now)
        return snapshot
    }

    private func heldState(id: String) throws -> TaskSnapshot {
        try withTask(id: id, isUpdate: false, forReading: true) { task in
            // A read right after the runner's step sees it (the counter is otherwise read within throttle_ms).
            catchUpCounter(task, at: max(clock.now(), task.lastTimestamp), notify: true)
            return TaskSnapshot(task)
        }
    }

    /// The engine's time for ETAs: the latest event time of any task. Events rather than the system clock, so
    /// replays with explicit timestamps see their own time; read from every shard (a lock each, no shared
    /// counter on the update path).
    func eventTime() -> Double {
        var latest = 0.0
        for shard in table.allShards { latest = max(latest, shard.withLock { $0.latestEvent }) }
        return latest
    }

}
