/// Where tasks live besides this engine's memory: nowhere (`MemoryStore`, the embedded default) or Redis
/// (`RedisStorage`: write-through, recovery, the fleet). The engine holds exactly one and never asks which: a
/// memory store answers every read with "not here" and takes every write as done.
///
/// Reads run on the caller's thread, off the update path (REST, WebSocket subscribe, batch queries, `resume`);
/// the update path reaches the store only through its feed's consumer (`writer`), which never blocks.
protocol TaskStore: AnyObject, Sendable {
    /// The consumer of the engine's storage feed (`ChangeFeed.storage`); nil when nothing is written anywhere.
    var writer: RedisWriter? { get }
    /// Redis' figures for stats and `/metrics`; nil without Redis.
    var redisMetrics: RedisMetrics? { get }
    /// The store's locks a forked child goes on using (`EngineCore.forkLocks`).
    var forkLocks: [any ForkLock] { get }

    /// Starts what feeds this engine's listener with other engines' changes.
    func startSubscriber(engine: any SubscriberSource) throws
    func stopSubscriber()
    /// Flushes what is queued (bounded) and stops writing.
    func stopWriter()
    /// In a forked child, with `forkLocks` held: drops what is the parent's.
    func clearInChild()
    /// In a forked child, after `clearInChild`, with the locks released: starts the child's own writer.
    func restartInChild(engine: any WriterSource) throws

    /// Passes a cancel request on to the engine that runs the task (another engine of the fleet).
    /// - Throws: `.notFound` without a store that reaches other engines, `.limit` when it could not be queued.
    func publishCancel(id: String, reason: String?) throws
    func persistTemplate(id: String, stagesJSON: String)
    func persistCompletion(_ record: CompletionRecord)
    /// Stored templates as (id, stages JSON).
    func templates() -> [(String, String)]
    /// Stored completion records (ETA history), as JSON texts.
    func completionRecords() -> [String]

    /// Ids of the newest tasks written, newest first, at most `limit`.
    func recentTaskIds(limit: Int, retention: Double) -> [String]
    /// The stored tasks' places in the listing's order (the creation index), after `after` (from the newest when
    /// nil), at most `count`; fewer at the index's end (or when a hand-edited index holds members that are no sort
    /// key, which are left out). nil when the store cannot be read now.
    func tasksCreated(after: ListPosition?, count: Int) -> [ListPosition]?
    /// Stored states (JSON) of those of `ids` that are stored.
    func stateJSONs(_ ids: [String]) -> [IdKey: String]
    func stateJSON(_ id: String) -> String?
    func loadTask(_ id: String) -> TaskSnapshot?
    /// As `loadTask`, for a resume: nil when the task is not stored; throws `.io` when the store cannot be read now
    /// (a resume must not take an unreadable task for an absent one, and start it anew over what is stored).
    func loadTaskForResume(_ id: String) throws -> TaskSnapshot?
    func logs(_ id: String) -> [LogEntry]?
    /// Stored events from seq `from` up to (not including) `before`; nil when not stored.
    func streamEvents(_ id: String, from: UInt64, before: UInt64) -> [HistoryEvent]?
    /// The events after `after` and before `current`, when every one of them is stored.
    func recoverEvents(_ id: String, after: UInt64, current: UInt64) -> [HistoryEvent]?
    func batchMembers(_ batchId: String) -> [String]

    /// Whether previews are stored, so that a listener of another engine serves them (the task's id then goes
    /// into the preview's URL: a file name does not give it back).
    var sharesPreviews: Bool { get }
    /// On the preview thread: stores the preview file just written at `path` as the task's preview `name`, with
    /// the task's expiry, through the writer (never blocks; a file over the store's size cap is refused and
    /// counted).
    func persistPreview(taskId: String, name: String, path: String)
    /// A stored preview's PNG; nil when it is not stored, its task expired, or the store cannot be read.
    func preview(taskId: String, name: String) -> [UInt8]?
}

/// No store: tasks live in this engine's memory only.
final class MemoryStore: TaskStore {
    var writer: RedisWriter? { nil }
    var redisMetrics: RedisMetrics? { nil }
    var forkLocks: [any ForkLock] { [] }
    func startSubscriber(engine: any SubscriberSource) throws {}
    func stopSubscriber() {}
    func stopWriter() {}
    func clearInChild() {}
    func restartInChild(engine: any WriterSource) throws {}
    func publishCancel(id: String, reason: String?) throws {
        throw EngineError.notFound("no task \"\(id)\" in this engine, and no redis_url to reach other engines")
    }
    func persistTemplate(id: String, stagesJSON: String) {}
    func persistCompletion(_ record: CompletionRecord) {}
    func templates() -> [(String, String)] { [] }
    func completionRecords() -> [String] { [] }
    func recentTaskIds(limit: Int, retention: Double) -> [String] { [] }
    func tasksCreated(after: ListPosition?, count: Int) -> [ListPosition]? { [] }
    func stateJSONs(_ ids: [String]) -> [IdKey: String] { [:] }
    func stateJSON(_ id: String) -> String? { nil }
    func loadTask(_ id: String) -> TaskSnapshot? { nil }
    func loadTaskForResume(_ id: String) throws -> TaskSnapshot? { nil }
    func logs(_ id: String) -> [LogEntry]? { nil }
    func streamEvents(_ id: String, from: UInt64, before: UInt64) -> [HistoryEvent]? { nil }
    func recoverEvents(_ id: String, after: UInt64, current: UInt64) -> [HistoryEvent]? { nil }
    func batchMembers(_ batchId: String) -> [String] { [] }
    var sharesPreviews: Bool { false }
    func persistPreview(taskId: String, name: String, path: String) {}
    func preview(taskId: String, name: String) -> [UInt8]? { nil }
}
