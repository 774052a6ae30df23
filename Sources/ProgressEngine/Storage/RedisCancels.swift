/// Cancel requests through Redis (docs/REDIS.md, "Cancel requests"). A listener asked to cancel a task that
/// another engine of the fleet runs queues two writes on its Redis writer: the request under the task's `cancel`
/// key (for an engine that reads the task later: a resumed runner, a reconnected writer) and an entry on the
/// `cancels` stream. Every engine's writer thread reads that stream a few times a second (`CancelPoller`) and hands
/// each request for a task it runs to its engine. So the runner's update path never waits on Redis, and a request
/// reaches the runner's engine within about `CancelPoller.interval` plus one Redis round trip.
enum CancelRecord {
    /// Entries the `cancels` stream keeps (`XADD MAXLEN ~`): readers are at most `CancelPoller.interval` behind.
    static let streamMaxLength = 1000

    /// The `cancel` key's value: `{"reason", "requested_at"}` (epoch seconds).
    static func json(reason: String?, at time: Double) -> String {
        var w = JSONWriter()
        w.beginObject()
        w.key("reason"); w.string(reason)
        w.key("requested_at"); w.number(time)
        w.endObject()
        return w.output
    }

    /// The reason of a `cancel` key's value (`.some(nil)`: no reason given); nil when the value is not a request.
    static func reason(fromJSON text: String) -> String?? {
        guard let value = try? JSONParser.parse(text, context: "cancel request"),
              let r = try? JSONObjectReader(value, context: "cancel request") else { return nil }
        return .some((try? r.string("reason")) ?? nil)
    }
}

extension RedisWriter {
    /// Queues a request for a task another engine runs (`SET` of its `cancel` key with the task's expiry, `XADD` to
    /// the `cancels` stream), written with this writer's next round.
    /// - Returns: false when the queue is full (nothing was queued).
    func enqueueCancel(taskId id: String, reason: String?) -> Bool {
        var entry: [RedisArgument] = ["XADD", RedisArgument(keys.cancels), "MAXLEN", "~",
                                      RedisArgument(String(CancelRecord.streamMaxLength)), "*",
                                      "task_id", RedisArgument(id)]
        if let reason { entry += ["reason", RedisArgument(reason)] }
        let record = CancelRecord.json(reason: reason, at: SystemClock().now())
        return enqueue(commands: [["SET", RedisArgument(keys.cancel(id)), RedisArgument(record), "PX", activeTTL], entry])
    }
}

/// The writer thread's reading of cancel requests. Every `interval` it reads the `cancels` stream after the last
/// entry it saw (`XREAD`, non-blocking: the connection is the writer's). After each (re)connection it first takes
/// the stream's end as its starting point, then reads the `cancel` keys of this engine's unfinished tasks once, so
/// a request made while it was not connected still reaches the task. Requests for tasks this engine does not run
/// are ignored by the engine. Writer-thread state.
struct CancelPoller {
    static let interval = 0.2
    /// Stream entries read per round; more wait for the next round.
    static let maxEntries = 100

    /// The id of the last stream entry read; nil until the first round after a (re)connection.
    private var cursor: String?
    private var lastRead = -Double.infinity

    /// When the next round is due (monotonic).
    var due: Double { lastRead + CancelPoller.interval }

    /// The connection is new: the next round starts from the stream's end and reads the tasks' keys.
    mutating func reset() {
        cursor = nil
    }

    /// One round. - Returns: the commands sent. - Throws: `EngineError.io` when the connection failed.
    mutating func read(_ c: RedisConnection, keys: RedisKeys, engine: any WriterSource, now: Double) throws -> Int {
        lastRead = now
        guard let after = cursor else { return try catchUp(c, keys: keys, engine: engine) }
        let reply = try c.command(["XREAD", "COUNT", RedisArgument(String(CancelPoller.maxEntries)), "STREAMS",
                                   RedisArgument(keys.cancels), RedisArgument(after)])
        // [[stream, [[id, [field, value, ...]], ...]]], or null when nothing is new.
        guard case let .array(streams) = reply, case let .array(pair)? = streams.first, pair.count == 2,
              case let .array(entries) = pair[1] else { return 1 }
        for entry in entries {
            guard case let .array(item) = entry, item.count == 2, let id = item[0].text,
                  case let .array(fields) = item[1] else { continue }
            cursor = id
            var task: String?, reason: String?
            var i = 0
            while i + 1 < fields.count {
                switch fields[i].text {
                case "task_id": task = fields[i + 1].text
                case "reason": reason = fields[i + 1].text
                default: break
                }
                i += 2
            }
            if let task { engine.applyCancelRequest(id: task, reason: reason) }
        }
        return 1
    }

    /// After a (re)connection: the stream's last entry becomes the cursor, then the `cancel` key of every unfinished
    /// task of this engine is read (pipelined); a request found there is applied as one read from the stream.
    private mutating func catchUp(_ c: RedisConnection, keys: RedisKeys, engine: any WriterSource) throws -> Int {
        var last = "0-0"
        if case let .array(entries) = try c.command(["XREVRANGE", RedisArgument(keys.cancels), "+", "-", "COUNT", "1"]),
           case let .array(item)? = entries.first, let id = item.first?.text {
            last = id
        }
        cursor = last
        let ids = engine.activeOwnedTasks().map(\.id)
        for id in ids { c.append(["GET", RedisArgument(keys.cancel(id))]) }
        var requests: [(String, String?)] = []
        for id in ids {
            if let text = try c.reply().text, let reason = CancelRecord.reason(fromJSON: text) {
                requests.append((id, reason))
            }
        }
        for (id, reason) in requests { engine.applyCancelRequest(id: id, reason: reason) }
        return 1 + ids.count
    }
}
