/// Refused runner calls (SPEC §5, "never break the job"): counted, logged in the task's log or on standard
/// error at most once a second, and answered with an error code; the runner goes on.
extension EngineCore {
    /// The error for task `id`, which this engine does not hold (`.invalidArgument` when `id` is no valid id).
    /// `logged`: an update, rejected and logged as such (`logRejectedUnknown`).
    func unknownTask(_ id: String, logged: Bool) throws -> EngineError {
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
        if let storeWriter { ChangeFeed.storage.note(task, urgent: false, to: storeWriter) }
        listener?.noteLog(taskId: task.id, entry: entry)
    }

    /// A call rejected outside `withTask`'s update path (bad event data, a log entry, a preview or a step counter
    /// refused): counted here (withTask counts the rest) and logged in the task's log when the task exists, else on
    /// standard error like an update of an unknown task.
    fileprivate func rejectedBeforeTask(id: String, _ error: Error) {
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
    func countingRefusal<R>(id: String, _ body: () throws -> R) throws -> R {
        do {
            return try body()
        } catch {
            rejectedBeforeTask(id: id, error)
            throw error
        }
    }

    /// An update of a task this engine does not hold has no task log: it is logged on standard error (a JSON line,
    /// at most one a second for the whole engine, saying how many more there were).
    fileprivate func logRejectedUnknown(_ error: EngineError) {
        let now = clock.now()
        guard let more = unknownRejects.withLock({ $0.admit(at: now) }) else { return }
        var fields = [("error", "\(EngineError.statusName(error.status))"), ("message", error.message)]
        if more > 0 { fields.append(("more_since_last", String(more))) }
        EngineLog.write(.warning, "update_rejected", fields)
    }
}

/// "At most once a second, saying how many were left out": a log line for something that can happen at any rate.
struct OncePerSecond {
    /// When the last one was admitted, and how many were refused since.
    private var lastAt = -Double.infinity
    private var refused = 0

    /// Whether one may go out `now` (seconds, any clock the caller keeps to): the count refused since the last
    /// one, or nil (then counted) when the last one was less than a second ago.
    mutating func admit(at now: Double) -> Int? {
        guard now - lastAt >= 1 else {
            refused += 1
            return nil
        }
        defer { (lastAt, refused) = (now, 0) }
        return refused
    }
}
