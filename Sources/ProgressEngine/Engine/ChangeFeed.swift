/// Where a task's position in one consumer's feed is kept: on the task, guarded by its shard lock.
struct FeedSlot {
    enum Queued: UInt8 {
        /// Not in the consumer's queue: the next change queues it.
        case idle
        /// Queued; the consumer takes it when its throttle window allows.
        case queued
        /// Queued with an urgent change among the queued ones: taken at once, whatever the throttle.
        case queuedUrgent
    }

    var queued = Queued.idle
    /// Monotonic time the consumer last took the task: its throttle window starts there.
    var lastTakenAt = -Double.infinity
}

/// A consumer of a feed: told when a task enters its queue. Called under the task's shard lock, so it only
/// records the id and wakes its own thread.
protocol ChangeConsumer: AnyObject {
    func enqueue(taskId: String)
}

/// A throttled change feed with an urgent bypass, one per consumer: `fanout` for the listener, `storage` for the
/// Redis writer. Every rule of the change path is here, once:
///
/// - A task is queued for a consumer at most once until the consumer takes it, plus once more when an urgent
///   change (creation, stage change, terminal state, resume) comes after a queued one: the consumer's queue
///   stays bounded by the number of tasks, however fast a runner updates.
/// - `take` hands a task over at most once per throttle window, unless an urgent change is queued: that is
///   taken at once (SPEC §7).
/// - The latest state is never lost: a throttled task is handed over when its window ends (`later`), and a
///   take the consumer could not complete is put back as urgent (`requeue`).
/// - The fan-out feed keeps each urgent state the listener has not taken yet (`held`), so a subscriber sees
///   every stage change and terminal state in order, even when a newer state came before the listener ran.
/// - The storage feed never queues a mirror (another engine's task: its own engine writes it).
///
/// Every method is called under the task's shard lock; `now` is the consumer's monotonic time.
struct ChangeFeed {
    enum Kind { case fanout, storage }

    /// What the consumer does with a queued task now.
    enum Take: Equatable {
        /// Hand it over; `urgent` when an urgent change was among the queued ones.
        case take(urgent: Bool)
        /// Throttled: look again at this monotonic time.
        case later(Double)
        /// Not queued (already taken, or never queued).
        case nothing
    }

    // Computed, not stored: a stored static is a lazily initialised global (a once-check on every read), while
    // these fold to a constant on the update path, and so does the switch on `kind`.
    static var fanout: ChangeFeed { ChangeFeed(kind: .fanout) }
    static var storage: ChangeFeed { ChangeFeed(kind: .storage) }

    /// Urgent states held per task while the listener has not taken them (a runner stuck in a loop of resumes
    /// cannot grow it further; stage changes are bounded by the stages).
    static let maxHeldUrgent = 64

    let kind: Kind

    /// The task changed; `urgent` as `TaskRecord.lastChangeUrgent`. Tells `consumer` when the task enters its
    /// queue (or becomes urgent in it).
    @inline(__always)
    func note<C: ChangeConsumer>(_ task: TaskRecord, urgent: Bool, to consumer: C) {
        switch kind {
        case .fanout:
            if urgent { holdUrgent(task) }
            if FeedSlot.enter(&task.fanoutSlot, urgent: urgent) { consumer.enqueue(taskId: task.id) }
        case .storage:
            if !task.isMirror, FeedSlot.enter(&task.storageSlot, urgent: urgent) { consumer.enqueue(taskId: task.id) }
        }
    }

    /// Takes the task for the consumer unless the throttle holds it back.
    func take(_ task: TaskRecord, now: Double, throttle: Double) -> Take {
        switch kind {
        case .fanout:
            let taken = FeedSlot.take(&task.fanoutSlot, now: now, throttle: throttle)
            if case .take = taken { task.urgentState = nil }
            return taken
        case .storage:
            guard !task.isMirror else { return .nothing }
            return FeedSlot.take(&task.storageSlot, now: now, throttle: throttle)
        }
    }

    /// The earlier urgent states kept for the listener (oldest first), emptied. Called right after a `take`.
    func takeHeld(_ task: TaskRecord) -> [TaskSnapshot] {
        guard kind == .fanout, !task.heldUrgent.isEmpty else { return [] }
        defer { task.heldUrgent = [] }
        return task.heldUrgent
    }

    /// A taken change did not reach its destination: the task stays queued, as urgent so it goes first. The
    /// consumer keeps the id (it is not enqueued again).
    func requeue(_ task: TaskRecord) {
        switch kind {
        case .fanout: task.fanoutSlot.queued = .queuedUrgent
        case .storage: task.storageSlot.queued = .queuedUrgent
        }
    }

    /// The storage feed's destination acknowledged events up to `seq` and `logs` log entries.
    func ack(_ task: TaskRecord, seq: UInt64, logs: Int) {
        precondition(kind == .storage, "only Redis acknowledges what it stored")
        task.persistedSeq = max(task.persistedSeq, seq)
        task.persistedLogs = max(task.persistedLogs, logs)
    }

    /// An urgent change: an urgent state still unsent is kept before this change moves past it.
    @inline(never)
    private func holdUrgent(_ task: TaskRecord) {
        if task.fanoutSlot.queued == .queuedUrgent, let earlier = task.urgentState,
           task.heldUrgent.count < ChangeFeed.maxHeldUrgent {
            task.heldUrgent.append(earlier)
        }
        task.urgentState = TaskSnapshot(task)
    }
}

extension FeedSlot {
    /// - Returns: whether the consumer must be told (the task entered its queue, or became urgent in it).
    @inline(__always)
    static func enter(_ slot: inout FeedSlot, urgent: Bool) -> Bool {
        switch slot.queued {
        case .idle:
            slot.queued = urgent ? .queuedUrgent : .queued
            return true
        case .queued:
            guard urgent else { return false }
            slot.queued = .queuedUrgent
            return true
        case .queuedUrgent:
            return false
        }
    }

    static func take(_ slot: inout FeedSlot, now: Double, throttle: Double) -> ChangeFeed.Take {
        guard slot.queued != .idle else { return .nothing }
        let urgent = slot.queued == .queuedUrgent
        // The window's end as `later` names it, so a consumer that comes back at that time takes the task.
        let windowEnd = slot.lastTakenAt + throttle
        if !urgent && now < windowEnd { return .later(windowEnd) }
        slot.queued = .idle
        slot.lastTakenAt = now
        return .take(urgent: urgent)
    }
}
