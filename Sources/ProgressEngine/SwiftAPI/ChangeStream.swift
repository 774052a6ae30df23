import Synchronization

/// The change streams of Swift hosts (`Engine.changes(of:)`). The update path only notes which tasks changed:
/// one relaxed load when no stream is open; with streams, an insert into each stream's set and a wake, under
/// the task's shard lock (lock order: shard, then `streams`, then a stream's `pending`). Each stream's own task
/// takes the states, throttles and delivers them, off the runner's thread.
final class ChangeWatchers: @unchecked Sendable {
    private let open = Atomic<Int>(0)
    private let streams = Locked<(next: UInt64, byId: [UInt64: ChangeStream])>((1, [:]))

    @inline(__always)
    var isActive: Bool { open.load(ordering: .relaxed) > 0 }

    func add(_ stream: ChangeStream) -> UInt64 {
        streams.withLock { s in
            let id = s.next
            s.next += 1
            s.byId[id] = stream
            open.store(s.byId.count, ordering: .relaxed)
            return id
        }
    }

    func remove(_ id: UInt64) {
        streams.withLock { s in
            s.byId[id] = nil
            open.store(s.byId.count, ordering: .relaxed)
        }
    }

    /// A task changed; under its shard lock.
    func note(_ taskId: String) {
        streams.withLock { s in
            for stream in s.byId.values { stream.note(taskId) }
        }
    }

    /// The engine closes: every stream ends after what it has taken.
    func finishAll() {
        let all = streams.withLock { s in
            defer { s.byId = [:]; open.store(0, ordering: .relaxed) }
            return Array(s.byId.values)
        }
        for stream in all { stream.finish() }
    }
}

/// One open `changes(of:)` stream: the ids it watches (nil: every task), those changed since its task last
/// looked, and the wake of that task.
final class ChangeStream: @unchecked Sendable {
    let filter: Set<IdKey>?
    private let pending = Locked<(ids: Set<IdKey>, timerDue: Double?)>(([], nil))
    private let wake: AsyncStream<Void>.Continuation

    init(filter: Set<IdKey>?, wake: AsyncStream<Void>.Continuation) {
        self.filter = filter
        self.wake = wake
    }

    func note(_ id: String) {
        let key = IdKey(id)
        guard filter?.contains(key) ?? true else { return }
        pending.withLock { _ = $0.ids.insert(key) }
        wake.yield()
    }

    func note<S: Sequence>(all ids: S) where S.Element == IdKey {
        pending.withLock { $0.ids.formUnion(ids) }
        wake.yield()
    }

    func take() -> Set<IdKey> {
        pending.withLock { p in
            defer { p.ids = [] }
            return p.ids
        }
    }

    /// Looks at `ids` again at monotonic time `due` (their throttle window ends then), unless an earlier look is
    /// already due.
    func retry(_ ids: Set<IdKey>, at due: Double, now: Double) {
        let schedule: Bool = pending.withLock { p in
            p.ids.formUnion(ids)
            if let current = p.timerDue, current <= due { return false }
            p.timerDue = due
            return true
        }
        guard schedule else { return }
        Task.detached { [self] in
            try? await Task.sleep(for: .seconds(max(0, due - now)))
            pending.withLock { $0.timerDue = nil }
            wake.yield()
        }
    }

    func finish() {
        wake.finish()
    }
}

/// What a stream's task delivers, and when: the listener's rules for one subscriber (SPEC §7). The first state
/// of a task goes out at once; a change of stage or status goes out at once, preceded by the stage changes and
/// terminal states it moved past since the last delivery (from the task's history, in order); other changes
/// wait for `throttle` after the last delivery and are coalesced into the latest state.
struct ChangeDelivery {
    private struct Delivered {
        var seq: UInt64
        var at: Double
        var stage: Int
        var status: TaskStatus
    }

    let core: EngineCore
    let throttle: Double
    /// Monotonic seconds (`monotonicNow`; a test's own clock).
    let monotonic: @Sendable () -> Double
    private var delivered: [IdKey: Delivered] = [:]
    /// Watched ids whose terminal state was delivered (only for a stream of given ids).
    private var finished: Set<IdKey> = []

    init(core: EngineCore, throttle: Double, monotonic: @escaping @Sendable () -> Double = { monotonicNow() }) {
        self.core = core
        self.throttle = throttle
        self.monotonic = monotonic
    }

    /// Delivers what `changed` holds now.
    /// - Returns: true when every watched task has delivered its terminal state (the stream is done).
    mutating func round(_ changed: Set<IdKey>, stream: ChangeStream,
                        to out: AsyncStream<TaskProgress>.Continuation) -> Bool {
        let now = monotonic()
        var later: Set<IdKey> = []
        var due = Double.infinity
        for key in changed {
            guard let snapshot = try? core.snapshot(id: key.id) else { continue }
            let last = delivered[key]
            if let last, snapshot.seq <= last.seq { continue }
            let urgent = last.map { snapshot.currentStage != $0.stage || snapshot.status != $0.status } ?? true
            if !urgent, let last, now - last.at < throttle {
                later.insert(key)
                due = min(due, last.at + throttle)
                continue
            }
            if let last, let missed = core.missedEvents(id: key.id, after: last.seq, current: snapshot.seq) {
                var stage = last.stage
                for event in missed where !event.type.waitsForThrottle || event.stage != stage {
                    out.yield(TaskProgress(snapshot.asOf(event)))
                    stage = event.stage
                }
            }
            out.yield(TaskProgress(snapshot))
            delivered[key] = Delivered(seq: snapshot.seq, at: now, stage: snapshot.currentStage,
                                      status: snapshot.status)
            if snapshot.status.isTerminal, stream.filter != nil { finished.insert(key) }
        }
        if !later.isEmpty { stream.retry(later, at: due, now: now) }
        if let filter = stream.filter { return finished.count == filter.count }
        return false
    }
}
