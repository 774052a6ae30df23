/// The engine's side of Redis storage: what the writer takes from tasks, what recovery and the fleet put back.
/// Everything here runs under the same shard locks as the rest of the engine.
extension EngineCore {
    /// Takes a dirty task for writing unless the throttle holds it back (urgent changes are never held back).
    /// - Parameters:
    ///   - now: monotonic seconds.
    ///   - throttle: minimum seconds between two writes of a task's non-urgent changes.
    func takeWrite(id: String, now: Double, throttle: Double) -> WriteDecision {
        let key = TaskKey(owning: id)
        return table.shard(for: key).withLock { shard in
            guard let task = shard.tasks[key] else { return .nothing }
            switch ChangeFeed.storage.take(task, now: now, throttle: throttle) {
            case .nothing: return .nothing
            case let .later(at): return .later(at)
            case .take: break
            }
            let after = task.persistedSeq
            let events = task.history.newest(while: { $0.seq > after })
            var lost = 0
            if let first = events.first, first.seq > after + 1, task.history.count == TaskRecord.historyCapacity {
                lost = Int(first.seq - after - 1)
            }
            let total = task.logs.appended
            let newLogs = total - task.persistedLogs
            let logs = task.logs.newest(newLogs)
            return .write(TaskWrite(id: task.id, snapshot: TaskSnapshot(task), again: task.writtenAgain, events: events,
                                    firstSeq: after + 1, lostEvents: lost, logs: logs, logsTotal: total,
                                    lostLogs: newLogs - logs.count))
        }
    }

    /// A write did not reach Redis: the task stays dirty (urgent, so it goes first after reconnecting).
    func requeueWrite(id: String) {
        let key = TaskKey(owning: id)
        table.shard(for: key).withLock { shard in
            if let task = shard.tasks[key] { ChangeFeed.storage.requeue(task) }
        }
    }

    /// Redis acknowledged a write: events up to `seq` and `logs` log entries are stored.
    func ackWrite(id: String, seq: UInt64, logs: Int) {
        let key = TaskKey(owning: id)
        table.shard(for: key).withLock { shard in
            if let task = shard.tasks[key] {
                ChangeFeed.storage.ack(task, seq: seq, logs: logs)
                task.writtenAgain = false
            }
        }
    }

    /// A state write of this engine's task was refused: Redis holds another engine's state of it at `storedSeq` or
    /// later (a listener failed it as lost while this engine was paused). The task goes on past that seq, with an
    /// event saying so (a "resumed" one, or its terminal event again), so that its own state is stored and every
    /// listener takes it (they keep the highest seq): the runner is alive, and what it did stands.
    /// A task this engine took over as lost is the other way round: its worker was alive and stored its own state
    /// first (its completion, say), so the task becomes a mirror of what Redis holds.
    func reclaim(id: String, storedSeq: UInt64) {
        let key = TaskKey(owning: id)
        let now = clock.now()
        enum Outcome { case none, reclaimed, givenBack }
        let outcome: Outcome = table.shard(for: key).withLock { shard in
            guard let task = shard.tasks[key], !task.isMirror, task.seq <= storedSeq else { return .none }
            if task.takenOver { return .givenBack }
            task.reclaim(after: storedSeq, at: max(now, task.lastTimestamp))
            noteChanged(task)
            return .reclaimed
        }
        switch outcome {
        case .none:
            return
        case .reclaimed:
            StorageLog.write(.warning, "task_reclaimed", [("task_id", id), ("stored_seq", String(storedSeq)),
                ("reason", "another engine wrote this task (taken over as lost while this engine did not heartbeat); "
                    + "its state goes on past that seq")])
        case .givenBack:
            guard let stored = store.loadTask(id) else {
                // Not readable now: the worker's next publish (a higher seq) makes the task a mirror again.
                return
            }
            takeStoredState(stored)
            StorageLog.write(.info, "worker_alive", [("task_id", id), ("stored_seq", String(stored.seq)),
                ("status", stored.status.name), ("reason", "the worker of a task failed as lost stored its own "
                    + "state first; this engine's failure was not stored, and it mirrors the worker's state")])
        }
    }

    /// Replaces a task this engine took over with the state its worker stored (at the seq of the failure this engine
    /// recorded, or later): the listener's clients forget what they were sent of it, as for a task made anew.
    private func takeStoredState(_ stored: TaskSnapshot) {
        let key = TaskKey(owning: stored.id)
        var completion: CompletionRecord?
        let replaced: Bool = table.shard(for: key).withLock { shard in
            guard let task = shard.tasks[key], task.takenOver, !task.isMirror, stored.createdAt == task.createdAt,
                  stored.seq >= task.seq else { return false }
            listener?.noteExpired(taskIds: [stored.id])
            let mirror = TaskRecord(restoring: stored)
            mirror.isMirror = true
            shard.tasks[key] = mirror
            completion = EngineCore.mirroredCompletion(mirror)
            noteChanged(mirror)
            return true
        }
        if replaced, let completion { completions.add(completion) }
    }

    /// Another engine's task that completed joins this engine's ETA history (its owner stored the record).
    private static func mirroredCompletion(_ task: TaskRecord) -> CompletionRecord? {
        guard task.status == .completed, let end = task.completedAt else { return nil }
        var record = CompletionRecord(completed: task, at: end)
        record.fromMirror = true
        return record
    }

    func fleetHistory() -> (templates: [(id: String, stagesJSON: String)], completions: [CompletionRecord]) {
        let known = templates.withLock { $0.map { (id: $0.key.id, stagesJSON: StageDefinition.json($0.value)) } }
        return (known, completions.allRecords().filter { !$0.fromMirror })
    }

    func acknowledgedTasks() -> [(id: String, createdAt: Double, seq: UInt64, logs: Int)] {
        var out: [(id: String, createdAt: Double, seq: UInt64, logs: Int)] = []
        for shard in table.allShards {
            shard.withLock { state in
                for task in state.tasks.values where !task.isMirror && task.persistedSeq > 0 {
                    out.append((task.id, task.createdAt, task.persistedSeq, task.persistedLogs))
                }
            }
        }
        return out
    }

    func writeAgain(id: String, storedSeq: UInt64, storedLogs: Int) {
        let key = TaskKey(owning: id)
        table.shard(for: key).withLock { shard in
            guard let task = shard.tasks[key], !task.isMirror else { return }
            task.persistedSeq = min(task.persistedSeq, storedSeq)
            task.persistedLogs = min(task.persistedLogs, storedLogs)
            task.writtenAgain = true
            ChangeFeed.storage.requeue(task)
        }
    }

    /// This engine's own queued and executing tasks (their Redis keys' expiry is refreshed while they run, and they
    /// are heartbeated: a task whose worker died while it waited in its queue is lost too), with the batch each
    /// belongs to.
    func activeOwnedTasks() -> [(id: String, batch: String?)] {
        var out: [(id: String, batch: String?)] = []
        for shard in table.allShards {
            shard.withLock { state in
                for task in state.tasks.values where !task.status.isTerminal && !task.isMirror {
                    out.append((task.id, task.batchId))
                }
            }
        }
        return out
    }

    // MARK: - Recovery: tasks this engine does not hold

    /// Runs `body`; when it finds no task, answers with `stored` from the store instead (if it has the task).
    func withStoredFallback<R>(_ body: () throws -> R, stored: (any TaskStore) -> R?) throws -> R {
        do {
            return try body()
        } catch let e as EngineError where e.status == EngineError.notFound("").status {
            guard let r = stored(store) else { throw e }
            return r
        }
    }

    /// A task read from Redis as a record of its own (not inserted in the table).
    func storedRecord(id: String) -> TaskRecord? {
        store.loadTask(id).map { TaskRecord(restoring: $0) }
    }

    /// As `storedRecord`, for a resume: throws `.io` when Redis cannot be read now.
    func storedRecordForResume(id: String) throws -> TaskRecord? {
        try store.loadTaskForResume(id).map { TaskRecord(restoring: $0) }
    }

    /// The events a resuming client missed: after `after`, before `current` (whose state it gets next).
    /// - Returns: nil when neither memory nor the Redis stream holds every one of them.
    func missedEvents(id: String, after: UInt64, current: UInt64) -> [HistoryEvent]? {
        guard after < current else { return after == current ? [] : nil }
        if after + 1 == current { return [] }
        let memory = try? withTask(id: id, isUpdate: false, forReading: true) { task -> [HistoryEvent]? in
            guard after >= task.historyGapSeq, let first = task.history.first, first.seq <= after + 1 else { return nil }
            return task.history.newest(while: { $0.seq > after }).filter { $0.seq < current }
        }
        if let events = memory ?? nil { return events }
        return store.recoverEvents(id, after: after, current: current)
    }

    // MARK: - Fleet: other engines' tasks

    /// Applies another engine's published change to the local mirror of the task (made on first sight), and
    /// lets the listener fan it out. Mirrors are never written back.
    func applyRemote(_ stored: TaskSnapshot, events: [HistoryEvent], firstSeq: UInt64, complete: Bool, logs: [LogEntry]) {
        let key = TaskKey(owning: stored.id)
        var completion: CompletionRecord?
        func noteCompletion(_ task: TaskRecord) { completion = EngineCore.mirroredCompletion(task) }
        let isNew: Bool = table.shard(for: key).withLock { shard in
            if let task = shard.tasks[key], task.isMirror, stored.createdAt != task.createdAt {
                // Another task under this id. An older one's late publish is dropped; a newer one (the id used again
                // once the mirrored task finished) replaces the mirror from its own seq, which starts low again:
                // the listener forgets what its clients were sent of the old one first, as for an expired task.
                guard stored.createdAt > task.createdAt else { return false }
                listener?.noteExpired(taskIds: [stored.id])
                shard.tasks[key] = nil
            }
            if let task = shard.tasks[key] {
                guard stored.seq > task.seq || !logs.isEmpty else { return false }
                let wasCompleted = task.status == .completed
                defer { if !wasCompleted { noteCompletion(task) } }
                if !task.isMirror {
                    // This engine took the task over (resume, or "worker lost") but its runner is alive and ahead.
                    guard stored.seq > task.seq else { return false }
                    task.isMirror = true
                }
                if firstSeq > task.seq + 1 || !complete {
                    task.historyGapSeq = max(task.historyGapSeq, complete ? firstSeq - 1 : stored.seq)
                }
                if task.applyRemote(stored, events: events) { noteChanged(task) }
                for entry in logs { task.appendRemoteLog(entry) }
                return false
            }
            let task = TaskRecord(restoring: stored)
            task.isMirror = true
            noteCompletion(task)
            task.historyGapSeq = complete ? max(firstSeq, 1) - 1 : stored.seq
            task.appendRemoteHistory(events)
            for entry in logs { task.appendRemoteLog(entry) }
            shard.tasks[key] = task
            noteChanged(task)
            return true
        }
        if let completion { completions.add(completion) }
        if isNew, let batch = stored.batchId { noteBatchMember(batch: batch, id: stored.id) }
        if let listener { for entry in logs { listener.noteLog(taskId: stored.id, entry: entry) } }
    }

    /// After the subscriber (re)connects: mirrors may have missed updates; take Redis' state for them.
    func refreshMirrors(from storage: RedisStorage) {
        var ids: [String] = []
        for shard in table.allShards {
            shard.withLock { state in
                for task in state.tasks.values where task.isMirror && !task.status.isTerminal { ids.append(task.id) }
            }
        }
        for (_, text) in storage.stateJSONs(ids) {
            guard let stored = try? StoredTask.parse(text) else { continue }
            applyRemote(stored, events: [], firstSeq: stored.seq + 1, complete: false, logs: [])
        }
    }

    /// Fails a task whose engine stopped heartbeating (SPEC §5 worker failures), once: the failure is written and
    /// published as this engine's change; a task no longer executing in Redis just leaves the heartbeat set.
    func failLostWorker(id: String, storage: RedisStorage) {
        let key = TaskKey(owning: id)
        // A task this engine runs itself is alive: its heartbeat is only late.
        let own = table.shard(for: key).withLock { $0.tasks[key].map { !$0.isMirror && !$0.status.isTerminal } ?? false }
        if own { return }
        guard let read = storage.read({ c in try c.command(["GET", RedisArgument(storage.keys.state(id))]).text }) else {
            return
        }
        guard let text = read, let stored = try? StoredTask.parse(text), !stored.status.isTerminal else {
            storage.forgetHeartbeat(id)
            return
        }
        table.shard(for: key).withLock { shard in
            if let task = shard.tasks[key], task.seq >= stored.seq {
                task.isMirror = false
                task.takenOver = true
                task.persistedSeq = max(task.persistedSeq, task.seq)
                task.persistedLogs = task.logs.appended
            } else {
                let task = TaskRecord(restoring: stored)
                task.takenOver = true
                shard.tasks[key] = task
            }
        }
        do {
            try fail(id: id, error: "worker lost")
            storage.metrics.workersLost.add(1, ordering: .relaxed)
            StorageLog.write(.warning, "worker_lost", [("task_id", id),
                ("heartbeat_timeout_seconds", String(config.heartbeatTimeoutSeconds)),
                ("reason", "its engine has not heartbeated for heartbeat_timeout_seconds (the process died, hangs, or "
                    + "lost Redis); the task is failed with error \"worker lost\". A worker that is alive but slow to "
                    + "reach Redis needs a longer heartbeat_timeout_seconds")])
        } catch {}
    }
}
