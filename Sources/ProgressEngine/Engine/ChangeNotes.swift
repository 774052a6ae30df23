import Glibc

/// Changes noted for the listener, the Redis writer and the Swift API's streams, and what the listener takes.
extension EngineCore {
    /// A task changed (its seq moved): queue it for the listener and, unless it mirrors another engine's task,
    /// for the Redis writer. Under the shard lock.
    @inline(__always)
    func noteChanged(_ task: TaskRecord) {
        if let listener { ChangeFeed.fanout.note(task, urgent: task.lastChangeUrgent, to: listener) }
        if watchers.isActive { noteWatchers(task) }
        noteWriteOnly(task)
    }

    /// What follows every accepted runner call on a task, under its shard lock, written once: the shard's count
    /// of updates and latest event time, the change feeds when the task's seq moved, the queue board when its
    /// status did (the board lock is taken inside shard locks only, so it sees a task's changes in order).
    @inline(__always)
    func afterChange(_ task: TaskRecord, _ shard: inout ShardState, seqBefore: UInt64, statusBefore: TaskStatus) {
        shard.updates += 1
        if task.seq != seqBefore {
            noteChanged(task)
            if task.updatedAt > shard.latestEvent { shard.latestEvent = task.updatedAt }
        }
        if task.status != statusBefore { statusChanged(task) }
    }

    /// Out of line: only with a `changes(of:)` stream open, and the update path stays small without one.
    @inline(never)
    private func noteWatchers(_ task: TaskRecord) {
        watchers.note(task.id)
    }

    /// A change for Redis only (the listener sends it with the task's next change). Under the shard lock.
    @inline(__always)
    func noteWriteOnly(_ task: TaskRecord) {
        if let storeWriter { ChangeFeed.storage.note(task, urgent: task.lastChangeUrgent, to: storeWriter) }
    }

    /// Takes a queued task for fan-out unless the throttle holds it back.
    /// - Parameters:
    ///   - now: monotonic seconds.
    ///   - throttle: minimum seconds between two fan-outs of a non-urgent change.
    ///   - watched: whether anyone subscribes to the task (no snapshot is taken otherwise).
    func takeFanout(id: String, now: Double, throttle: Double, watched: Bool) -> FanoutDecision {
        let key = TaskKey(owning: id)
        return table.shard(for: key).withLock { shard in
            guard let task = shard.tasks[key] else { return .nothing }
            switch ChangeFeed.fanout.take(task, now: now, throttle: throttle) {
            case .nothing: return .nothing
            case let .later(at): return .later(at)
            case let .take(urgent):
                let held = ChangeFeed.fanout.takeHeld(task)
                return watched ? .send(TaskSnapshot(task), urgent: urgent, held: held) : .nothing
            }
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
        let held = Set(out.map { IdKey($0.id) })
        let ids = store.recentTaskIds(limit: EngineCore.maxStoredWildcardTasks, retention: config.retentionSeconds)
            .filter { !held.contains(IdKey($0)) }
        let states = store.stateJSONs(ids)
        for id in ids {
            guard let text = states[IdKey(id)], let stored = try? StoredTask.parse(text) else { continue }
            out.append(TaskSnapshot(TaskRecord(restoring: stored)))
        }
        let time = eventTime()
        for i in out.indices { out[i].eta = estimate(out[i], now: time) }
        return out.sorted { $0.createdAt < $1.createdAt }
    }
}
