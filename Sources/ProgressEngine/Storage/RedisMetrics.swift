import CProgress
import Glibc
import Synchronization

/// Counters of the Redis storage, for `progress_engine_stats_get` and `/metrics`.
final class RedisMetrics: Sendable {
    /// Task writes (one task's state, new events and logs in one go) acknowledged by Redis.
    let taskWrites = Atomic<Int>(0)
    /// Commands sent by the writer (including heartbeats, templates, ETA records).
    let commands = Atomic<Int>(0)
    /// Commands Redis answered with an error (other than a stream entry written twice after a reconnect).
    let commandErrors = Atomic<Int>(0)
    /// History events that never reached Redis: pushed out of a task's 4096-event history before they could
    /// be written (Redis down or slow), or thinned from a flood of progress steps.
    let droppedEvents = Atomic<Int>(0)
    /// Log entries pushed out of a task's 1000-entry log before they could be written.
    let droppedLogs = Atomic<Int>(0)
    /// Template, ETA and preview writes dropped because their queue was full, or not flushed at close.
    let droppedWrites = Atomic<Int>(0)
    /// Successful connections after the first one (writer and subscriber).
    let reconnects = Atomic<Int>(0)
    /// 1 while the writer is connected.
    let connected = Atomic<Int>(0)
    /// Tasks waiting to be written.
    let queueDepth = Atomic<Int>(0)
    /// Updates of other engines received on the update channel and applied.
    let remoteUpdates = Atomic<Int>(0)
    /// Tasks this engine marked failed with "worker lost".
    let workersLost = Atomic<Int>(0)
    /// Reads of tasks this engine does not hold (REST, WebSocket, resume) answered from Redis.
    let recoveryReads = Atomic<Int>(0)
    /// Previews not written to Redis because their PNG is larger than `redis_preview_max_bytes`.
    let previewsTooLarge = Atomic<Int>(0)

    /// Every counter back to zero (a forked child's engine counts its own).
    func reset() {
        taskWrites.store(0, ordering: .relaxed)
        commands.store(0, ordering: .relaxed)
        commandErrors.store(0, ordering: .relaxed)
        droppedEvents.store(0, ordering: .relaxed)
        droppedLogs.store(0, ordering: .relaxed)
        droppedWrites.store(0, ordering: .relaxed)
        reconnects.store(0, ordering: .relaxed)
        connected.store(0, ordering: .relaxed)
        queueDepth.store(0, ordering: .relaxed)
        remoteUpdates.store(0, ordering: .relaxed)
        workersLost.store(0, ordering: .relaxed)
        recoveryReads.store(0, ordering: .relaxed)
        previewsTooLarge.store(0, ordering: .relaxed)
    }
}

/// One line of the engine's log per storage incident (connection lost or back, drops), never per update.
enum StorageLog {
    static func write(_ level: EngineLog.Level, _ event: String, _ fields: [(String, String)]) {
        EngineLog.write(level, event, fields, component: "redis")
    }
}
