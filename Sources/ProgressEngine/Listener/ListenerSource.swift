/// What the listener needs from the engine, and all it sees of it: the fan-out feed, the views it serves, and the
/// figures of `/metrics`. The engine sees the listener only as the consumer of its fan-out feed
/// (`ChangeConsumer`), plus `noteLog` and `noteExpired`. Methods are safe from the service thread (each takes the
/// locks it needs); none blocks on a socket, except reads of tasks this engine does not hold, which go to Redis.
protocol ListenerSource: AnyObject, Sendable {
    var config: EngineConfig { get }
    /// The clock of the listener's throttle and timers.
    var monotonic: any EngineClock { get }
    var previewDirectory: String? { get }

    /// Takes a queued task from the fan-out feed (`ChangeFeed.fanout`) unless its throttle holds it back.
    func takeFanout(id: String, now: Double, throttle: Double, watched: Bool) -> FanoutDecision
    /// The engine's time for ETAs (read once per round of fan-outs).
    func eventTime() -> Double
    func estimate(_ task: TaskSnapshot, now: Double) -> ETAEstimate?

    func snapshot(id: String, now: Double?) throws -> TaskSnapshot
    /// The state of a task this engine holds (nil otherwise: no Redis read).
    func heldSnapshot(id: String, now: Double) -> TaskSnapshot?
    func wildcardItems() -> [WildcardItem]
    /// One page of the task listing (this engine's tasks and, with Redis, the fleet's), with ETAs.
    func listTasks(_ query: TaskQuery) -> TaskPage
    func missedEvents(id: String, after: UInt64, current: UInt64) -> [HistoryEvent]?
    func taskJSON(id: String) throws -> String
    func logsJSON(id: String, since: Double, minLevel: LogLevel) throws -> String
    func historyJSON(id: String, afterSeq: UInt64) throws -> String
    func batchJSON(batchId: String, taskIds: [String]?) throws -> String
    func writeBatch(batchId: String, taskIds: [String]?, into w: inout JSONWriter) throws
    /// Records a cancel request (REST `POST …/cancel`, WebSocket `cancel`); may queue a write to Redis, never waits
    /// on one, but may read the task from Redis.
    func requestCancel(id: String, reason: String?) throws

    /// A preview of `taskId` kept by the store (another engine's, in a fleet; read from Redis); nil without one.
    func storedPreview(taskId: String, name: String) -> [UInt8]?

    func counters() -> EngineCore.Counters
    /// The Redis writer's figures when `redis_url` is set.
    var redisMetrics: RedisMetrics? { get }
}

extension ListenerSource {
    func snapshot(id: String) throws -> TaskSnapshot { try snapshot(id: id, now: nil) }
}

/// What the listener should do with a queued task now.
enum FanoutDecision {
    /// Send `held` (earlier urgent states, oldest first), then this state, to the task's subscribers.
    case send(TaskSnapshot, urgent: Bool, held: [TaskSnapshot])
    /// Throttled: look again at this monotonic time.
    case later(Double)
    /// Nothing to send (already taken, nobody watching, or the task is gone).
    case nothing
}

extension EngineCore: ListenerSource {
    var redisMetrics: RedisMetrics? { store.redisMetrics }

    func storedPreview(taskId: String, name: String) -> [UInt8]? {
        store.preview(taskId: taskId, name: name)
    }
}
