/// What the Redis writer needs from the engine, and all it sees of it: the storage feed and the tasks whose keys
/// it keeps alive. The engine sees the writer only as the consumer of that feed (`ChangeConsumer`) plus
/// `enqueue(commands:)`. Called from the writer thread; each method takes the shard locks it needs.
protocol WriterSource: AnyObject, Sendable {
    var config: EngineConfig { get }
    /// The clock of the writer's throttle, heartbeats, back-off and close bound.
    var monotonic: any EngineClock { get }

    /// Takes a queued task from the storage feed (`ChangeFeed.storage`) unless its throttle holds it back.
    func takeWrite(id: String, now: Double, throttle: Double) -> WriteDecision
    /// A write did not reach Redis: the task stays queued, ahead of the others.
    func requeueWrite(id: String)
    /// Redis acknowledged a write: events up to `seq` and `logs` log entries are stored.
    func ackWrite(id: String, seq: UInt64, logs: Int)
    /// A state write was refused: another engine's state of the task at `storedSeq` or later is stored.
    func reclaim(id: String, storedSeq: UInt64)
    func eventTime() -> Double
    func estimate(_ task: TaskSnapshot, now: Double) -> ETAEstimate?
    func activeOwnedTasks() -> [(id: String, batch: String?)]
    /// This engine's own tasks (finished ones included, mirrors left out) that Redis acknowledged a write of: the
    /// seq and the count of log entries it acknowledged.
    func acknowledgedTasks() -> [(id: String, createdAt: Double, seq: UInt64, logs: Int)]
    /// Redis no longer holds what it acknowledged of the task (a restart that lost writes): the task is written again
    /// from what Redis still has, `storedSeq` (0: no state) and `storedLogs` entries, urgently.
    func writeAgain(id: String, storedSeq: UInt64, storedLogs: Int)
    /// The templates this engine knows (registered here or loaded from Redis) and its completion records (made here
    /// or loaded from Redis; not those made from mirrored tasks, `CompletionRecord.fromMirror`), oldest first:
    /// written again where a restarted Redis lost them.
    func fleetHistory() -> (templates: [(id: String, stagesJSON: String)], completions: [CompletionRecord])
    /// A cancel request read from Redis: recorded when this engine runs the task, has written it and it has not
    /// finished.
    func applyCancelRequest(id: String, reason: String?)
}

/// What the subscriber thread (fleet fan-out, lost workers) needs from the engine: it puts other engines' states
/// into mirrors, which the listener then fans out.
protocol SubscriberSource: AnyObject, Sendable {
    var config: EngineConfig { get }
    var monotonic: any EngineClock { get }
    func applyRemote(_ stored: TaskSnapshot, events: [HistoryEvent], firstSeq: UInt64, complete: Bool, logs: [LogEntry])
    func refreshMirrors(from storage: RedisStorage)
    func failLostWorker(id: String, storage: RedisStorage)
}

/// What the writer should do with a queued task now.
enum WriteDecision {
    case write(TaskWrite)
    /// Throttled: look again at this monotonic time.
    case later(Double)
    /// Nothing to write (already taken, a mirror, or the task is gone).
    case nothing
}

extension EngineCore: WriterSource, SubscriberSource {}
