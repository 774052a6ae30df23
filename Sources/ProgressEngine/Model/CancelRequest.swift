/// A request from outside the runner (REST `POST …/cancel`, the WebSocket `cancel` message, or another engine of
/// the fleet through Redis) that a task's runner stop. The engine only records it and shows it: the runner reads
/// it (`progress_task_cancel_requested`) and acknowledges by cancelling the task; nothing ever stops a runner.
/// Kept on the task under its shard lock; pending while the task has not finished.
struct CancelRequest: Sendable, Equatable {
    /// Why, as the requester put it; nil when no reason was given.
    var reason: String?
    /// The seq of the task's change that recorded the request: a replay of earlier events shows none.
    var seq: UInt64
    /// Engine time when the engine holding the task recorded it; `cancel_timeout_seconds` counts from it.
    var requestedAt: Double
    /// The warning that the runner has not answered within `cancel_timeout_seconds` was logged (it is logged once).
    var timeoutLogged = false

    /// The longest reason accepted, in UTF-8 bytes: it is shown on dashboards and stored with the task.
    static let maxReasonBytes = 1024

    /// Checks a requester's reason.
    /// - Throws: `EngineError.range` when it is longer than `maxReasonBytes`.
    static func validate(reason: String?) throws {
        guard let reason, reason.utf8.count > maxReasonBytes else { return }
        throw EngineError.range("the cancel reason is \(reason.utf8.count) bytes; at most \(maxReasonBytes) are "
            + "accepted")
    }
}

extension CancelRequest {
    /// The request of a task rebuilt from `stored` (a resumed runner's task, a mirror taking another engine's
    /// newer state): the one it holds already when the stored state still shows one (a mirror keeps the seq and
    /// time it first saw), else the stored one (as of the stored state's seq and time); nil when none stands.
    init?(restoring stored: TaskSnapshot, keeping held: CancelRequest?) {
        guard stored.cancelPending, let request = stored.cancelRequest else { return nil }
        self = held ?? request
    }
}
