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
    /// Where the task's throttle window starts (monotonic): see `take`.
    var lastTakenAt = -Double.infinity
    /// When the task entered the queue, by the consumer's `queueTime` (NaN when the consumer keeps none).
    var queuedAt = Double.nan
}

/// A consumer of a feed: told when a task enters its queue. Called under the task's shard lock, so it only
/// records the id and wakes its own thread.
protocol ChangeConsumer: AnyObject {
    func enqueue(taskId: String)
    /// The consumer's monotonic time, read when a task enters its fan-out queue, so that throttle windows follow
    /// the runner's changes rather than the consumer's rounds (`FeedSlot.take`); NaN: windows follow the takes.
    func queueTime() -> Double
}

extension ChangeConsumer {
    func queueTime() -> Double { .nan }
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
            if task.fanoutSlot.queued == .idle { task.fanoutSlot.queuedAt = consumer.queueTime() }
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
    /// The share of a throttle window by which a change may come early and still count as on the runner's
    /// cadence (`take`): 1/32, about 3 ms of the default 100.
    static let cadenceSlack = 1.0 / 32

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

    /// With `queuedAt` (the listener's feed), windows follow the runner rather than the rounds that take its
    /// changes:
    /// - a change that came within `cadenceSlack` of its window's end (a runner updating once a window, with a
    ///   little jitter) is taken at once, and its window starts at the change: tasks a runner changes at the same
    ///   instants stay in the same rounds, however late a round took one of them;
    /// - a change that came earlier waits for the window's end, and the next window starts there, not at the
    ///   take: a runner changing faster gets one state per window, on a steady grid, and a late take does not push
    ///   the next one back.
    /// So two non-urgent takes are a window apart, less at most `cadenceSlack` and the lateness of the first. An
    /// urgent take, and every take without `queuedAt`, opens its window at the take.
    static func take(_ slot: inout FeedSlot, now: Double, throttle: Double) -> ChangeFeed.Take {
        guard slot.queued != .idle else { return .nothing }
        let urgent = slot.queued == .queuedUrgent
        // The window's end as `later` names it, so a consumer that comes back at that time takes the task.
        let windowEnd = slot.lastTakenAt + throttle
        let onCadence = slot.queuedAt >= windowEnd - throttle * FeedSlot.cadenceSlack  // false when NaN
        if !urgent && now < windowEnd && !onCadence { return .later(windowEnd) }
        slot.queued = .idle
        if urgent || slot.queuedAt.isNaN {
            slot.lastTakenAt = now
        } else {
            slot.lastTakenAt = onCadence ? min(now, slot.queuedAt) : windowEnd
        }
        return .take(urgent: urgent)
    }
}
