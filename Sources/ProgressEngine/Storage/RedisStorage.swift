import CProgress
import Glibc
import Synchronization

/// An engine's Redis side (SPEC §9): the writer thread (write-through, heartbeats), the subscriber thread of an
/// engine with a listener (fleet fan-out, lost workers), and a reader for tasks the engine does not hold.
///
/// Three hiredis contexts, never shared: the writer's and the subscriber's belong to their threads; the reader's
/// is used under a lock, synchronously, with 200 ms timeouts, only off the update path (REST, WebSocket
/// subscribe, batch queries, `resume`). After a failed read the reader does not try again for a second, so a
/// down Redis costs those calls at most 200 ms once a second, never the runner's updates.
final class RedisStorage: TaskStore, @unchecked Sendable {
    let url: RedisURL
    /// Monotonic time for the reader's retry rule (the engine's `monotonic`).
    let clock: any EngineClock
    let keys: RedisKeys
    /// Tells this engine's messages on the update channel from other engines' (a forked child gets its own).
    private(set) var engineId: String
    let metrics = RedisMetrics()
    private(set) var writer: RedisWriter?
    private(set) var subscriber: RedisSubscriber?
    private let reader = Locked<ReaderState>(ReaderState())
    /// `redis_preview_max_bytes`: larger previews stay on their engine's disk only.
    let previewLimit: Int
    /// The first preview refused for its size is logged; the others are only counted.
    private let loggedTooLarge = Atomic<Bool>(false)
    static let readTimeout = 0.2
    static let readRetryAfter = 1.0

    private struct ReaderState {
        var connection: RedisConnection?
        var failedAt = -Double.infinity
    }

    /// Starts the writer. Redis need not be up.
    /// - Throws: `EngineError.config` for a bad URL, `.io` if a thread cannot start.
    init(engine: any WriterSource, urlText: String) throws {
        url = try RedisURL.parse(urlText)
        clock = engine.monotonic
        keys = RedisKeys(namespace: engine.config.namespace)
        previewLimit = engine.config.redisPreviewMaxBytes
        engineId = RedisStorage.newEngineId()
        writer = try RedisWriter(engine: engine, url: url, keys: keys, engineId: engineId, metrics: metrics)
    }

    /// host-pid-random: unique per engine, and readable in Redis.
    private static func newEngineId() -> String {
        var host = [CChar](repeating: 0, count: 256)
        gethostname(&host, host.count - 1)
        let hostName = String(decoding: host.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return "\(hostName)-\(getpid())-\(String(UInt64.random(in: 0...UInt64.max), radix: 36))"
    }

    /// The reader's lock, for the fork handlers (`EngineCore.forkLocks`): held across fork(), so the reader's
    /// connection is idle then.
    var forkLocks: [any ForkLock] { [reader] }
    var redisMetrics: RedisMetrics? { metrics }

    /// In a forked child, with the reader's lock held by the fork handlers: the reader's socket is shared with the
    /// parent, so the child's copy is closed (hiredis' free closes the descriptor and sends nothing) and the
    /// child connects anew on its first read. Counters start from zero.
    func clearInChild() {
        reader.unsafeValue = ReaderState()
        metrics.reset()
        loggedTooLarge.store(false, ordering: .relaxed)
    }

    /// In a forked child, after `clearInChild`: the writer and subscriber threads are the parent's. Their objects
    /// are abandoned (their sockets stay open, unused, until the child exits: freeing a connection a thread was
    /// using mid-call is not safe); the child writes through a new writer under an engine id of its own, so a
    /// listener of the fleet, the parent's included, takes its tasks for another engine's. The child has no
    /// subscriber (it has no listener).
    /// - Throws: `EngineError.io` if the writer thread cannot start.
    func restartInChild(engine: any WriterSource) throws {
        abandonInChild(subscriber)
        subscriber = nil
        abandonInChild(writer)
        writer = nil
        engineId = RedisStorage.newEngineId()
        writer = try RedisWriter(engine: engine, url: url, keys: keys, engineId: engineId, metrics: metrics)
    }

    /// Starts the subscriber of an engine with a listener, once that listener exists (the subscriber's
    /// thread feeds it).
    func startSubscriber(engine: any SubscriberSource) throws {
        subscriber = try RedisSubscriber(engine: engine, storage: self)
    }

    /// Stops the subscriber (before the listener it feeds is stopped).
    func stopSubscriber() {
        subscriber?.stop()
    }

    /// Flushes and stops the writer (bounded by `RedisWriter.closeFlushSeconds`).
    func stopWriter() {
        writer?.stop()
    }

    // MARK: - Reading (any thread, off the update path)

    /// Runs `body` on the reader's connection, on the calling thread, with SIGPIPE held back there (the caller
    /// may be a host's thread, and hiredis writes without MSG_NOSIGNAL: see CProgress_sigpipe_hold).
    /// - Returns: nil if Redis cannot be reached (or failed within the last second).
    func read<R>(_ body: (RedisConnection) throws -> R) -> R? {
        var sigpipe = CProgress_sigpipe_guard()
        CProgress_sigpipe_hold(&sigpipe)
        defer { CProgress_sigpipe_release(&sigpipe) }
        return reader.withLock { state in
            let now = clock.now()
            if state.connection == nil {
                guard now - state.failedAt >= RedisStorage.readRetryAfter else { return nil }
                do {
                    state.connection = try RedisConnection(url: url, timeout: RedisStorage.readTimeout)
                } catch {
                    state.failedAt = now
                    return nil
                }
            }
            do {
                let result = try body(state.connection!)
                metrics.recoveryReads.add(1, ordering: .relaxed)
                return result
            } catch {
                state.connection = nil
                state.failedAt = now
                return nil
            }
        }
    }

    /// The stored TaskProgress JSON of a task; nil if Redis has none or cannot be reached.
    func stateJSON(_ id: String) -> String? {
        read { c in try c.command(["GET", RedisArgument(keys.state(id))]).text } ?? nil
    }

    /// The ids of the namespace's tasks written within the retention (the task index), newest first, at most `limit`.
    func recentTaskIds(limit: Int, retention: Double) -> [String] {
        read { c -> [String] in
            let since = SystemClock().now() - retention
            guard case let .array(items) = try c.command(["ZREVRANGEBYSCORE", RedisArgument(keys.tasks), "+inf",
                                                          RedisArgument(String(since)), "LIMIT", "0",
                                                          RedisArgument(String(limit))]) else { return [] }
            return items.compactMap(\.text)
        } ?? []
    }

    /// Walks the creation index (`RedisKeys.tasksByCreation`) from just after `after`, newest first.
    func tasksCreated(after: ListPosition?, count: Int) -> [ListPosition]? {
        read { c -> [ListPosition] in
            // "(" makes the bound exclusive: the page starts strictly after the cursor's task.
            let start = after.map { RedisArgument([UInt8(ascii: "(")] + $0.sortKey) } ?? "+"
            guard case let .array(items) = try c.command(["ZREVRANGEBYLEX", RedisArgument(keys.tasksByCreation), start, "-",
                                                          "LIMIT", "0", RedisArgument(String(count))]) else { return [] }
            return items.compactMap { item in
                guard case let .string(member) = item else { return nil }
                return ListPosition(sortKey: member)
            }
        }
    }

    /// The stored task, with a cancel request another engine published for it (its `cancel` key) that the task's
    /// own engine has not written into its state yet.
    func loadTask(_ id: String) -> TaskSnapshot? {
        (try? loadTaskForResume(id)) ?? nil
    }

    func loadTaskForResume(_ id: String) throws -> TaskSnapshot? {
        let read = read { c -> (String?, String?) in
            c.append(["GET", RedisArgument(keys.state(id))])
            c.append(["GET", RedisArgument(keys.cancel(id))])
            return (try c.reply().text, try c.reply().text)
        }
        guard let read else {
            throw EngineError.io("task \"\(id)\": resume could not read its stored state (Redis unreachable or not "
                + "answering); nothing was created and the stored task is untouched: create it with resume again "
                + "once Redis answers (reads are retried after a second)")
        }
        guard let state = read.0, var task = try? StoredTask.parse(state) else { return nil }
        let request = read.1
        if task.cancelRequest == nil, !task.status.isTerminal, let request,
           let reason = CancelRecord.reason(fromJSON: request) {
            task.cancelRequest = CancelRequest(reason: reason, seq: task.seq, requestedAt: task.updatedAt)
        }
        return task
    }

    /// States of many tasks in one round trip (batch queries); missing ones are nil.
    func stateJSONs(_ ids: [String]) -> [IdKey: String] {
        guard !ids.isEmpty else { return [:] }
        return read { c -> [IdKey: String] in
            for id in ids { c.append(["GET", RedisArgument(keys.state(id))]) }
            var out: [IdKey: String] = [:]
            for id in ids {
                if let text = try c.reply().text { out[IdKey(id)] = text }
            }
            return out
        } ?? [:]
    }

    func logs(_ id: String) -> [LogEntry]? {
        read { c -> [LogEntry] in
            guard case let .array(items) = try c.command(["LRANGE", RedisArgument(keys.logs(id)), "0", "-1"]) else { return [] }
            return items.compactMap { item in
                item.text.flatMap { try? StoredEvents.parseLog(JSONParser.parse($0, context: "stored log")) }
            }
        }
    }

    /// One entry of a task's event stream: the events of one write, covering seqs `first...last`.
    struct StreamEntry {
        var first: UInt64
        var last: UInt64
        var complete: Bool
        var events: [HistoryEvent]
    }

    /// The events of the stream entries `streamEntries(id, from:)` returns with seq below `before`, oldest first,
    /// each once (nil when Redis cannot be read).
    func streamEvents(_ id: String, from: UInt64, before: UInt64) -> [HistoryEvent]? {
        guard let entries = streamEntries(id, from: from) else { return nil }
        var events: [HistoryEvent] = []
        for entry in entries {
            for e in entry.events where e.seq < before && e.seq > (events.last?.seq ?? 0) {
                events.append(e)
            }
        }
        return events
    }

    /// The stream entries whose last seq is `from` or later, oldest first.
    func streamEntries(_ id: String, from: UInt64) -> [StreamEntry]? {
        read { c -> [StreamEntry] in
            let reply = try c.command(["XRANGE", RedisArgument(keys.events(id)), RedisArgument("\(max(from, 1))-0"), "+"])
            guard case let .array(entries) = reply else { return [] }
            var out: [StreamEntry] = []
            for entry in entries {
                guard case let .array(pair) = entry, pair.count == 2, let idText = pair[0].text,
                      let last = UInt64(idText.split(separator: "-").first ?? ""), case let .array(fields) = pair[1]
                else { continue }
                var item = StreamEntry(first: last, last: last, complete: false, events: [])
                var i = 0
                while i + 1 < fields.count {
                    let value = fields[i + 1].text ?? ""
                    switch fields[i].text {
                    case "first": item.first = UInt64(value) ?? last
                    case "complete": item.complete = value == "1"
                    case "events": item.events = (try? StoredEvents.parseEvents(JSONParser.parse(value, context: "stream"))) ?? []
                    default: break
                    }
                    i += 2
                }
                out.append(item)
            }
            return out
        }
    }

    /// The events after `after` and before `current` from the stream, if it holds every one of them (in the
    /// sense of SPEC §7: nothing the client missed is left out); nil otherwise.
    func recoverEvents(_ id: String, after: UInt64, current: UInt64) -> [HistoryEvent]? {
        guard after + 1 < current else { return [] }
        guard let entries = streamEntries(id, from: after + 1), let firstEntry = entries.first,
              firstEntry.first <= after + 1 else { return nil }
        var covered = after
        var out: [HistoryEvent] = []
        for entry in entries {
            guard entry.first <= covered + 1 else { return nil }
            if entry.last > covered && !entry.complete { return nil }
            for e in entry.events where e.seq > max(covered, out.last?.seq ?? 0) && e.seq < current { out.append(e) }
            covered = max(covered, entry.last)
            if covered + 1 >= current { return out }
        }
        return nil
    }

    /// The task's stored preview `name`, read with the task's state in one round trip: once the task expired
    /// (its state is gone) no preview of it is served, even in the moment its keys' expiries differ.
    func preview(taskId: String, name: String) -> [UInt8]? {
        read { c -> [UInt8]? in
            c.append(["EXISTS", RedisArgument(keys.state(taskId))])
            c.append(["HGET", RedisArgument(keys.previews(taskId)), RedisArgument(name)])
            let exists = try c.reply(), png = try c.reply()
            guard exists == .integer(1), case let .string(bytes) = png else { return nil }
            return bytes
        } ?? nil
    }

    func batchMembers(_ batchId: String) -> [String] {
        read { c -> [String] in
            guard case let .array(items) = try c.command(["SMEMBERS", RedisArgument(keys.batch(batchId))]) else { return [] }
            return items.compactMap(\.text).sorted()
        } ?? []
    }

    /// Tasks whose engine's last heartbeat is older than `before` (epoch seconds).
    func staleHeartbeats(before: Double) -> [String]? {
        read { c -> [String] in
            let reply = try c.command(["ZRANGEBYSCORE", RedisArgument(keys.heartbeats), "-inf", RedisArgument("(" + String(before)),
                                       "LIMIT", "0", "1000"])
            guard case let .array(items) = reply else { return [] }
            return items.compactMap(\.text)
        }
    }

    func forgetHeartbeat(_ id: String) {
        _ = read { c in try c.command(["ZREM", RedisArgument(keys.heartbeats), RedisArgument(id)]) }
    }

    func templates() -> [(String, String)] {
        read { c -> [(String, String)] in
            guard case let .array(items) = try c.command(["HGETALL", RedisArgument(keys.templates)]) else { return [] }
            var out: [(String, String)] = []
            var i = 0
            while i + 1 < items.count {
                if let k = items[i].text, let v = items[i + 1].text { out.append((k, v)) }
                i += 2
            }
            return out
        } ?? []
    }

    /// The completion records the fleet's engines wrote (the `eta` lists, at most `CompletionHistory.maxKeys` of
    /// them, the newest `capacity` records of each, oldest first); empty when Redis cannot be read.
    func completionRecords() -> [String] {
        read { c -> [String] in
            var out: [String] = []
            var cursor = "0", lists = 0
            repeat {
                guard case let .array(reply) = try c.command(["SCAN", RedisArgument(cursor), "MATCH",
                                                              RedisArgument(keys.etaPattern), "COUNT", "1000"]),
                      reply.count == 2, let next = reply[0].text, case let .array(found) = reply[1] else { break }
                cursor = next
                // The lists of this batch in one round trip (as stateJSONs), not one each.
                let batch = found.compactMap(\.text).prefix(CompletionHistory.maxKeys - lists)
                lists += batch.count
                for key in batch {
                    c.append(["LRANGE", RedisArgument(key), RedisArgument(String(-CompletionHistory.capacity)), "-1"])
                }
                for _ in batch {
                    if case let .array(items) = try c.reply() { out += items.compactMap(\.text) }
                }
            } while cursor != "0" && lists < CompletionHistory.maxKeys
            return out
        } ?? []
    }

    // MARK: - Writing what is not a task

    func publishCancel(id: String, reason: String?) throws {
        guard let writer, writer.enqueueCancel(taskId: id, reason: reason) else {
            throw EngineError.limit("the Redis writer's queue is full (Redis unreachable for long?); the cancel "
                + "request for task \"\(id)\" was not recorded, try again later")
        }
    }

    var sharesPreviews: Bool { previewLimit > 0 }

    /// Reads the preview file back (on the preview thread, right after it was written, so from the page cache) and
    /// hands its bytes to the writer; a file over `redis_preview_max_bytes` is counted, and the first one logged.
    func persistPreview(taskId: String, name: String, path: String) {
        guard previewLimit > 0, let writer else { return }
        switch PreviewFile.read(path, limit: previewLimit) {
        case .missing:
            return
        case let .tooLarge(size):
            metrics.previewsTooLarge.add(1, ordering: .relaxed)
            if !loggedTooLarge.exchange(true, ordering: .relaxed) {
                StorageLog.write(.warning, "preview_too_large", [
                    ("task_id", taskId), ("preview", name), ("bytes", String(size)),
                    ("redis_preview_max_bytes", String(previewLimit)),
                    ("hint", "served only by this engine's listener; raise redis_preview_max_bytes or lower "
                        + "preview_max_size (further ones are only counted: redis_previews_too_large)"),
                ])
            }
        case let .bytes(png):
            writer.enqueuePreview(taskId: taskId, name: name, png: png)
        }
    }

    /// RPUSH KEYS[1] ARGV[1] unless it is among the list's last ARGV[2] entries, then LTRIM to the last ARGV[3].
    static let pushOnce = RedisArgument("""
        for _, v in ipairs(redis.call('LRANGE', KEYS[1], -tonumber(ARGV[2]), -1)) do
          if v == ARGV[1] then return 0 end
        end
        redis.call('RPUSH', KEYS[1], ARGV[1])
        redis.call('LTRIM', KEYS[1], -tonumber(ARGV[3]), -1)
        return 1
        """)

    func persistTemplate(id: String, stagesJSON: String) {
        writer?.enqueue(commands: [["HSET", RedisArgument(keys.templates), RedisArgument(id), RedisArgument(stagesJSON)]])
    }

    func persistCompletion(_ record: CompletionRecord) {
        var w = JSONWriter()
        record.write(to: &w)
        // Once: the writer sends its other writes again after a lost reply, and a record twice would count a run
        // twice in every engine's history.
        writer?.enqueue(commands: [["EVAL", RedisStorage.pushOnce, "1", RedisArgument(keys.eta(record.templateId)),
                                    RedisArgument(w.bytes), "64", RedisArgument(String(CompletionHistory.capacity))]])
    }
}
