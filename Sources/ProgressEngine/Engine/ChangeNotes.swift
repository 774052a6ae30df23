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

    /// What a "*" subscription sends first, oldest first: this engine's tasks by id, each read when its turn comes
    /// (`snapshot(id:)`), and with Redis the fleet's others, read now in one round trip (up to
    /// `maxStoredWildcardTasks`), with their ETAs.
    func wildcardItems() -> [WildcardItem] {
        let now = clock.now()
        var held: [(createdAt: Double, id: String)] = []
        for shard in table.allShards {
            shard.withLock { state in
                for task in state.tasks.values where !task.isExpired(now: now, retention: config.retentionSeconds) {
                    held.append((task.createdAt, task.id))
                }
            }
        }
        let heldIds = Set(held.map { IdKey($0.id) })
        let ids = store.recentTaskIds(limit: EngineCore.maxStoredWildcardTasks, retention: config.retentionSeconds)
            .filter { !heldIds.contains(IdKey($0)) }
        var items = held.map { (createdAt: $0.createdAt, item: WildcardItem.held($0.id)) }
        if !ids.isEmpty {
            let states = store.stateJSONs(ids)
            let time = eventTime()
            for id in ids {
                guard let text = states[IdKey(id)], let stored = try? StoredTask.parse(text) else { continue }
                var snapshot = TaskSnapshot(TaskRecord(restoring: stored))
                snapshot.eta = estimate(snapshot, now: time)
                items.append((snapshot.createdAt, .stored(snapshot)))
            }
        }
        return items.sorted { $0.createdAt < $1.createdAt }.map(\.item)
    }
}

/// One task of a "*" subscription's first states (`EngineCore.wildcardItems()`).
enum WildcardItem {
    /// A task this engine holds: its state is read when it is sent.
    case held(String)
    /// A task read from Redis (boxed: the list is sorted and copied, and a snapshot is large).
    indirect case stored(TaskSnapshot)

    var id: String {
        switch self {
        case let .held(id): id
        case let .stored(snapshot): snapshot.id
        }
    }
}
