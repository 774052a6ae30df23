/// Cancel requests (docs/API.md, "Cancel"). The engine that runs a task records a request on it (`CancelRequest`),
/// where the runner reads it; a listener asked about a task another engine of the fleet runs passes the request on
/// through Redis (`TaskStore.publishCancel`), and that engine's Redis writer hands it back here
/// (`applyCancelRequest`). A request the runner has not answered within `cancel_timeout_seconds` is warned about
/// once in the task's log; the engine never stops a runner.
extension EngineCore {
    /// Records a request that the task's runner stop. Asking again while a request stands changes nothing.
    /// - Parameters:
    ///   - id: the task, held by this engine or (with Redis) by another engine of the fleet.
    ///   - reason: why, at most `CancelRequest.maxReasonBytes`; nil for none.
    /// - Throws: `.notFound` (neither this engine nor Redis has the task), `.state` (the task finished),
    ///   `.range` (the reason is too long), `.invalidArgument` (id), `.limit` (the Redis writer's queue is full:
    ///   nothing was recorded).
    func requestCancel(id: String, reason: String?) throws {
        try EngineCore.validateId(id)
        try CancelRequest.validate(reason: reason)
        enum Holder { case this(LogEntry?), mirror(TaskStatus), none }
        let key = TaskKey(owning: id)
        let now = clock.now()
        let holder: Holder = try table.shard(for: key).withLock { shard in
            guard let task = shard.tasks[key], !task.isExpired(now: now, retention: config.retentionSeconds) else {
                return .none
            }
            if task.isMirror { return .mirror(task.status) }
            guard !task.status.isTerminal else { throw EngineCore.finished(task.id, task.status) }
            let entry = try recordCancelRequest(task, reason: reason, now: now)
            shard.latestEvent = max(shard.latestEvent, task.updatedAt)
            return .this(entry)
        }
        switch holder {
        case let .this(entry):
            if let entry { noteCancelRecorded(id: id, entry: entry) }
        case let .mirror(status):
            guard !status.isTerminal else { throw EngineCore.finished(id, status) }
            try store.publishCancel(id: id, reason: reason)
        case .none:
            guard let stored = store.loadTask(id) else { throw try unknownTask(id, logged: false) }
            guard !stored.status.isTerminal else { throw EngineCore.finished(id, stored.status) }
            try store.publishCancel(id: id, reason: reason)
        }
    }

    /// A request published by another engine for a task this engine may run (read from Redis by the writer thread):
    /// recorded when this engine runs the task, Redis holds its state and it has not finished; ignored otherwise. A
    /// request can only have been made for a task whose state a listener read from Redis, so one found before the
    /// task's first write (which deletes the task's `cancel` key) was for an earlier task of the same id.
    func applyCancelRequest(id: String, reason: String?) {
        let key = TaskKey(owning: id)
        let now = clock.now()
        let entry: LogEntry? = table.shard(for: key).withLock { shard in
            guard let task = shard.tasks[key], !task.isMirror, !task.status.isTerminal, task.persistedSeq > 0,
                  let entry = try? recordCancelRequest(task, reason: reason, now: now) else { return nil }
            shard.latestEvent = max(shard.latestEvent, task.updatedAt)
            return entry
        }
        if let entry { noteCancelRecorded(id: id, entry: entry) }
    }

    /// `progress_task_cancel_requested`: whether a request stands for a task this engine holds. The shard lock only;
    /// never Redis.
    /// - Throws: `.notFound`, `.invalidArgument` (id).
    func cancelRequested(key: TaskKey, describe: () throws -> String) throws -> Bool {
        try withTask(key, describe: describe, isUpdate: false) { task in
            task.cancelRequest != nil && !task.status.isTerminal
        }
    }

    /// Under the task's shard lock, for a task this engine runs that has not finished.
    /// - Returns: the log entry that says so, nil when a request stood already.
    private func recordCancelRequest(_ task: TaskRecord, reason: String?, now: Double) throws -> LogEntry? {
        let ts = max(now, task.lastTimestamp)
        guard try task.requestCancel(reason: reason, at: ts) else { return nil }
        let entry = task.log(.warning, "cancel requested" + (reason.map { " (\($0))" } ?? "")
            + "; the runner is asked to stop and cancel the task", at: ts)
        noteChanged(task)
        return entry
    }

    /// After the shard lock: the request's log entry to subscribers, and the task watched for the timeout.
    private func noteCancelRecorded(id: String, entry: LogEntry) {
        listener?.noteLog(taskId: id, entry: entry)
        cancelWatch.withLock { _ = $0.insert(IdKey(id)) }
    }

    private static func finished(_ id: String, _ status: TaskStatus) -> EngineError {
        EngineError.state("task \"\(id)\" is \(status.name); only a queued or executing task can be cancelled")
    }

    /// The maintenance thread, once a second: logs a warning, once, in the log of each task whose request the runner
    /// has not answered (by cancelling, or finishing otherwise) within `cancel_timeout_seconds`. The request stands.
    func warnUnansweredCancels(now: Double) {
        let ids = cancelWatch.withLock { Array($0) }
        guard !ids.isEmpty else { return }
        var settled: [IdKey] = []
        var warnings: [(String, LogEntry)] = []
        for watched in ids {
            let id = watched.id
            let key = TaskKey(owning: id)
            table.shard(for: key).withLock { shard in
                guard let task = shard.tasks[key], var request = task.cancelRequest, !task.status.isTerminal,
                      !request.timeoutLogged else { return settled.append(watched) }
                let waited = now - request.requestedAt
                guard waited >= config.cancelTimeoutSeconds else { return }
                request.timeoutLogged = true
                task.cancelRequest = request
                let entry = task.log(.warning, "cancel requested \(Int(waited.rounded())) s ago is not answered: the "
                    + "runner has not cancelled the task (cancel_timeout_seconds \(config.cancelTimeoutSeconds)); the "
                    + "request stands, and the engine does not stop runners", at: max(now, task.lastTimestamp),
                    advancesTime: false)
                if let storeWriter { ChangeFeed.storage.note(task, urgent: false, to: storeWriter) }
                warnings.append((id, entry))
                settled.append(watched)
            }
        }
        cancelWatch.withLock { watched in for id in settled { watched.remove(id) } }
        for (id, entry) in warnings { listener?.noteLog(taskId: id, entry: entry) }
    }
}
