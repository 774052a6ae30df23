/// The queues the engine can see, for the ETA of queued tasks. Tasks of one template and resource configuration
/// whose first stage is named "queue" are taken to wait in one first-come-first-served line for the workers
/// that run such tasks; the tasks of that kind executing now are those workers' current jobs. Kept up to date on
/// creation and on status changes (never on a step); read when the ETA of a queued task is computed.
final class QueueBoard: Sendable {
    struct Key: Hashable, Sendable {
        let template: IdKey
        /// The resource configuration as `CompletionHistory.resourceKey`.
        let resource: String?
    }

    /// What a queued task sees of its line.
    struct Line: Sendable {
        /// Ids of the first tasks ahead of it, first in line first (at most the `limit` asked for).
        var ahead: [String]
        /// How many tasks are ahead of it in all.
        var aheadCount: Int
        /// Ids of the tasks executing.
        var running: [String]
    }

    private struct State {
        /// (created, id), in the order the tasks will start.
        var waiting: [(created: Double, id: String)] = []
        var running: Set<IdKey> = []
    }

    private let lines = Locked<[Key: State]>([:])

    /// The board's lock, for the fork handlers (`EngineCore.forkLocks`).
    var lockForFork: any ForkLock { lines }

    /// Forgets every line; in a forked child, whose tasks start empty, with the lock held by the fork handlers.
    func clearInChild() {
        lines.unsafeValue.removeAll()
    }

    /// A task created in its queue stage joins the line: after every task created at or before its time.
    /// - Parameters:
    ///   - id: the task.
    ///   - key: its line.
    ///   - created: its creation time (explicit timestamps may arrive out of order across tasks).
    func enqueue(_ id: String, key: Key, created: Double) {
        lines.withLock { all in
            var state = all[key, default: State()]
            let position = state.waiting.lastIndex(where: { $0.created <= created }).map { $0 + 1 } ?? 0
            state.waiting.insert((created, id), at: position)
            all[key] = state
        }
    }

    /// A task of the line changed status: executing (it left the queue for a worker), or finished.
    /// - Parameters:
    ///   - id: the task.
    ///   - key: its line.
    ///   - status: its new status.
    func moved(_ id: String, key: Key, to status: TaskStatus) {
        lines.withLock { all in
            guard var state = all[key] else { return }
            state.waiting.removeAll { IdKey.same($0.id, id) }
            if status == .executing { state.running.insert(IdKey(id)) } else { state.running.remove(IdKey(id)) }
            all[key] = state.waiting.isEmpty && state.running.isEmpty ? nil : state
        }
    }

    /// The line as a queued task sees it.
    /// - Parameters:
    ///   - id: the queued task.
    ///   - key: its line.
    ///   - limit: how many of the tasks ahead to name; a long line is counted, not copied.
    /// - Returns: nil when the task is not waiting in that line.
    func line(of id: String, key: Key, limit: Int) -> Line? {
        lines.withLock { all in
            guard let state = all[key], let position = state.waiting.firstIndex(where: { IdKey.same($0.id, id) }) else {
                return nil
            }
            return Line(ahead: state.waiting[..<min(position, limit)].map(\.id), aheadCount: position,
                        running: state.running.map(\.id).sorted())
        }
    }
}
