/// A client message the listener rejects: sent back as `{"type":"error","code","message"}`; the connection
/// lives on.
struct ProtocolError: Error {
    let code: String
    let message: String
}

/// The WebSocket protocol of SPEC §7: client messages in, server messages out.
enum Messages {
    // MARK: - Server → client

    static func connectionEstablished(clientId: String) -> JSONWriter {
        var w = JSONWriter()
        w.beginObject()
        w.key("type"); w.string("connection.established")
        w.key("client_id"); w.string(clientId)
        w.endObject()
        return w
    }

    /// `progress.update` (or `progress.current`) with the whole TaskProgress in `data`; `replayed`: a missed event
    /// replayed on `resume` (`data` is the task as of that event, `TaskSnapshot.asOf`).
    static func progressUpdate(_ s: TaskSnapshot, type: String = "progress.update", recovered: Bool? = nil,
                               replayed: Bool = false) -> JSONWriter {
        var w = JSONWriter(capacity: 1536)
        w.beginObject()
        w.key("type"); w.string(type)
        w.key("task_id"); w.string(s.id)
        w.key("seq"); w.integer(s.seq)
        if replayed { w.key("replayed"); w.bool(true) }
        if let recovered { w.key("recovered"); w.bool(recovered) }
        w.key("data"); TaskJSON.write(s, to: &w)
        w.endObject()
        return w
    }

    /// A fan-out's `progress.update` (as `progressUpdate(_:)` writes it) and where its TaskProgress lies in it,
    /// which the listener keeps as the task's delta base.
    static func progressUpdateAndData(_ s: TaskSnapshot) -> (JSONWriter, Range<Int>) {
        var w = JSONWriter(capacity: 1536)
        w.beginObject()
        w.key("type"); w.string("progress.update")
        w.key("task_id"); w.string(s.id)
        w.key("seq"); w.integer(s.seq)
        w.key("data")
        let start = w.bytes.count
        TaskJSON.write(s, to: &w)
        let end = w.bytes.count
        w.endObject()
        return (w, start..<end)
    }

    /// A delta subscriber's `progress.update`: an RFC 7386 merge `patch` that turns the TaskProgress of
    /// `base_seq` (the state this client was sent last) into the one of `seq` (`MergePatch`).
    static func progressPatch(taskId: String, seq: UInt64, baseSeq: UInt64, patch: [UInt8]) -> JSONWriter {
        var w = JSONWriter(capacity: patch.count + 112)
        w.beginObject()
        w.key("type"); w.string("progress.update")
        w.key("task_id"); w.string(taskId)
        w.key("seq"); w.integer(seq)
        w.key("base_seq"); w.integer(baseSeq)
        w.key("patch"); w.raw(patch)
        w.endObject()
        return w
    }

    static func taskLog(taskId: String, entry: LogEntry) -> JSONWriter {
        var w = JSONWriter()
        w.beginObject()
        w.key("type"); w.string("task.log")
        w.key("task_id"); w.string(taskId)
        w.key("entry"); entry.write(to: &w)
        w.endObject()
        return w
    }

    static func error(code: String, message: String) -> JSONWriter {
        var w = JSONWriter()
        w.beginObject()
        w.key("type"); w.string("error")
        w.key("code"); w.string(code)
        w.key("message"); w.string(message)
        w.endObject()
        return w
    }

    private static func taskIdList(type: String, _ ids: [String]) -> JSONWriter {
        var w = JSONWriter()
        w.beginObject()
        w.key("type"); w.string(type)
        w.key("task_ids"); w.beginArray()
        for id in ids { w.string(id) }
        w.endArray()
        w.endObject()
        return w
    }

    static func batchProgress(_ engine: any ListenerSource, batchId: String, taskIds: [String]?) throws -> JSONWriter {
        var w = JSONWriter(capacity: 1024)
        w.beginObject()
        w.key("type"); w.string("batch.progress")
        w.key("batch_id"); w.string(batchId)
        w.key("data"); try engine.writeBatch(batchId: batchId, taskIds: taskIds, into: &w)
        w.endObject()
        return w
    }

    // MARK: - Client → server

    /// Handles one client message on the service thread; every rejection becomes an `error` message.
    static func handle(_ l: Listener, client: ClientConnection, bytes: UnsafeBufferPointer<UInt8>, binary: Bool) {
        guard client.closing == nil else { return }
        l.metrics.messagesReceived.add(1, ordering: .relaxed)
        do {
            guard !binary else {
                throw ProtocolError(code: "binary_not_supported", message: "binary frames are not understood; send JSON text frames")
            }
            let value: JSONValue
            do {
                value = try JSONParser.parse(bytes: bytes, context: "message")
            } catch let e as EngineError {
                throw ProtocolError(code: "invalid_json", message: e.message)
            }
            try dispatch(l, client: client, value: value)
        } catch let e as ProtocolError {
            l.metrics.invalidMessages.add(1, ordering: .relaxed)
            client.send(WireMessage(error(code: e.code, message: e.message)))
        } catch let e as EngineError {
            l.metrics.invalidMessages.add(1, ordering: .relaxed)
            client.send(WireMessage(error(code: e.status == -2 ? "not_found" : "invalid_message", message: e.message)))
        } catch {
            client.send(WireMessage(Messages.error(code: "internal", message: "\(error)")))
        }
    }

    private static func dispatch(_ l: Listener, client: ClientConnection, value: JSONValue) throws {
        let reader: JSONObjectReader
        do {
            reader = try JSONObjectReader(value, context: "message")
        } catch let e as EngineError {
            throw ProtocolError(code: "invalid_message", message: e.message)
        }
        let type: String
        do {
            guard let t = try reader.string("type") else {
                throw ProtocolError(code: "invalid_message", message: "message needs a \"type\" string")
            }
            type = t
        } catch let e as EngineError {
            throw ProtocolError(code: "invalid_message", message: e.message)
        }
        do {
            switch type {
            case "subscribe":
                try subscribe(l, client: client, reader: reader)
            case "unsubscribe":
                let ids = try taskIds(reader)
                l.unsubscribe(client, from: ids)
                client.send(WireMessage(taskIdList(type: "unsubscribed", ids)))
            case "get_progress":
                guard let id = try reader.string("task_id") else {
                    throw ProtocolError(code: "invalid_message", message: "get_progress needs a \"task_id\" string")
                }
                let snapshot = try l.engine.snapshot(id: id)
                client.send(WireMessage(progressUpdate(snapshot, type: "progress.current")))
            case "get_batch_progress":
                guard let batch = try reader.string("batch_id") else {
                    throw ProtocolError(code: "invalid_message", message: "get_batch_progress needs a \"batch_id\" string")
                }
                let ids = try reader.array("task_ids").map { try stringList($0, key: "task_ids") }
                client.send(WireMessage(try batchProgress(l.engine, batchId: batch, taskIds: ids)))
            case "cancel":
                try cancel(l, client: client, reader: reader)
            case "ping":
                var w = JSONWriter()
                w.beginObject(); w.key("type"); w.string("pong"); w.endObject()
                client.send(WireMessage(w))
            default:
                throw ProtocolError(code: "unknown_type", message: "unknown message type \"\(type)\"; known: subscribe, "
                    + "unsubscribe, get_progress, get_batch_progress, cancel, ping")
            }
        } catch let e as EngineError where e.status == EngineError.json("").status {
            throw ProtocolError(code: "invalid_message", message: e.message)
        }
    }

    /// `cancel` {task_id, reason?}: `cancel.accepted` {task_id} once the request is recorded (as REST
    /// `POST …/cancel`; the connection was authorized when it opened), else an `error` whose code says why:
    /// `not_found`, `conflict` (the task finished), `invalid_message`, `unavailable` (Redis' queue is full).
    private static func cancel(_ l: Listener, client: ClientConnection, reader: JSONObjectReader) throws {
        guard let id = try reader.string("task_id"), EngineCore.isValidId(id) else {
            throw ProtocolError(code: "invalid_message",
                                message: "cancel needs a \"task_id\" of 1-256 printable characters")
        }
        let reason = try reader.string("reason")
        do {
            try l.engine.requestCancel(id: id, reason: reason)
        } catch let e as EngineError {
            let refusal = Routes.cancelRefusal(e)
            throw ProtocolError(code: refusal.code == "bad_request" ? "invalid_message" : refusal.code,
                                message: e.message)
        }
        var w = JSONWriter()
        w.beginObject()
        w.key("type"); w.string("cancel.accepted")
        w.key("task_id"); w.string(id)
        w.endObject()
        client.send(WireMessage(w))
    }

    private static func stringList(_ values: [JSONValue], key: String) throws -> [String] {
        try values.map {
            guard case let .string(s) = $0 else {
                throw ProtocolError(code: "invalid_message", message: "\"\(key)\" must be an array of strings")
            }
            return s
        }
    }

    /// `task_ids`: a non-empty array of valid task ids or "*".
    private static func taskIds(_ reader: JSONObjectReader) throws -> [String] {
        guard let values = try reader.array("task_ids") else {
            throw ProtocolError(code: "invalid_message", message: "\"task_ids\" must be an array of task ids (or \"*\")")
        }
        let ids = try stringList(values, key: "task_ids")
        guard !ids.isEmpty else {
            throw ProtocolError(code: "invalid_message", message: "\"task_ids\" is empty: name a task id, or \"*\"")
        }
        for id in ids where id != "*" {
            guard EngineCore.isValidId(id) else {
                throw ProtocolError(code: "invalid_message", message: "task id \(JSONValue.string(id).serialized()) is not "
                    + "1-256 printable characters")
            }
        }
        // An id named twice is one subscription: its current state goes out once.
        var seen = Set<IdKey>()
        return ids.filter { seen.insert(IdKey($0)).inserted }
    }

    /// The longest `interval_ms` a subscribe may ask for: a minute between two states of a task.
    static let maxIntervalMs = 60_000

    private static func subscribe(_ l: Listener, client: ClientConnection, reader: JSONObjectReader) throws {
        let ids = try taskIds(reader)
        var resume: [IdKey: UInt64] = [:]
        if let object = try reader.object("resume"), case let .object(members) = object {
            for (id, value) in members {
                guard case let .number(n) = value, n >= 0, n.rounded() == n, n < 9e15 else {
                    throw ProtocolError(code: "invalid_message", message: "resume[\"\(id)\"] must be a seq number >= 0")
                }
                resume[IdKey(id)] = UInt64(n)
            }
        }
        // Delta mode (docs/API.md "Delta updates"): opt-in per subscribe, for the tasks it names.
        let delta = try reader.bool("delta") ?? false
        // The connection's update interval (docs/API.md "Update interval"): the latest subscribe that gives one.
        var interval: UInt32?
        if let value = try reader.number("interval_ms") {
            guard value >= 0, value <= Double(maxIntervalMs), value.rounded() == value else {
                throw ProtocolError(code: "invalid_message",
                                    message: "interval_ms must be an integer from 0 (every state) to \(maxIntervalMs)")
            }
            interval = UInt32(value)
        }
        try l.subscribe(client, to: ids, delta: delta, intervalMs: interval)
        client.send(WireMessage(taskIdList(type: "subscribed", ids)))
        guard ids.contains("*") else {
            let time = l.engine.eventTime()  // every shard's lock: once, not per id
            for snapshot in ids.compactMap({ try? l.engine.snapshot(id: $0, now: time) }) {
                sendCurrent(snapshot, to: client, resume: resume, delta: delta, l)
            }
            return
        }
        // Every task: the resumed ones at once (their replay must come before any fan-out of theirs), the others a
        // slice at a time as the client takes them.
        var later = l.engine.wildcardItems()
        if !resume.isEmpty {
            let items = later, time = l.engine.eventTime()
            later = []
            for item in items {
                guard resume[IdKey(item.id)] != nil else {
                    later.append(item)
                    continue
                }
                if let snapshot = current(item, l, time: time) {
                    sendCurrent(snapshot, to: client, resume: resume, delta: delta, l)
                }
            }
        }
        client.wildcardStates = later.isEmpty ? nil : WildcardStates(items: later, delta: delta)
        queueWildcardSlice(l, client: client)
    }

    /// Queues the next slice of a "*" subscribe's current states (`WildcardStates`); after the last, handles what
    /// the client sent meanwhile.
    static func continueWildcard(_ l: Listener, client: ClientConnection) {
        queueWildcardSlice(l, client: client)
        handleDeferred(l, client: client)
    }

    /// A message that came while a "*" subscribe's states are still going: it waits for them. Past the bound, the
    /// connection is not read until the waiting messages are handled.
    static func deferMessage(_ l: Listener, client: ClientConnection, bytes: UnsafeBufferPointer<UInt8>, binary: Bool) {
        client.deferred.append((Array(bytes), binary))
        client.deferredBytes += bytes.count
        if client.deferred.count >= WildcardStates.maxDeferredMessages
            || client.deferredBytes >= WildcardStates.maxDeferredBytes {
            client.setReading(false)
        }
    }

    /// Handles the waiting messages in order, until one starts another "*" subscribe's states.
    private static func handleDeferred(_ l: Listener, client: ClientConnection) {
        while client.wildcardStates == nil && !client.deferred.isEmpty {
            let (bytes, binary) = client.deferred.removeFirst()
            client.deferredBytes -= bytes.count
            bytes.withUnsafeBufferPointer { handle(l, client: client, bytes: $0, binary: binary) }
        }
        if client.deferred.isEmpty { client.setReading(true) }
    }

    private static func queueWildcardSlice(_ l: Listener, client: ClientConnection) {
        guard var states = client.wildcardStates else { return }
        let time = l.engine.eventTime()
        var queued = 0
        while queued < WildcardStates.slice && states.next < states.items.count {
            let item = states.items[states.next]
            states.next += 1
            // A task that expired since the subscribe is skipped.
            guard let snapshot = current(item, l, time: time) else { continue }
            sendCurrent(snapshot, to: client, resume: [:], delta: states.delta, l)
            queued += 1
        }
        client.wildcardStates = states.next < states.items.count ? states : nil
        client.wildcardMark = client.writtenTotal + client.pendingCount
    }

    private static func current(_ item: WildcardItem, _ l: Listener, time: Double) -> TaskSnapshot? {
        switch item {
        case let .held(id): try? l.engine.snapshot(id: id, now: time)
        // Another engine's task read at the subscribe: this engine may hold it by now (a mirror of its newer
        // states, or a task made anew under its id), and then that is its state.
        case let .stored(snapshot): l.engine.heldSnapshot(id: snapshot.id, now: time) ?? snapshot
        }
    }

    /// A subscribe's current state of one task, after the events the client missed when it resumes the task.
    private static func sendCurrent(_ snapshot: TaskSnapshot, to client: ClientConnection, resume: [IdKey: UInt64],
                                    delta: Bool, _ l: Listener) {
        var recovered: Bool? = nil
        if let last = resume[IdKey(snapshot.id)] {
            // SPEC §7: the current state is sent at once on subscribe, after the replay; a client already at
            // that seq gets it too (with "recovered": true), which tells it the task is still there.
            recovered = replay(l, client: client, current: snapshot, after: last)
        }
        client.sendProgress(WireMessage(progressUpdate(snapshot, recovered: recovered)), task: snapshot.id,
                            seq: snapshot.seq, urgent: true, again: delta)
    }

    /// Replays the events after `after` up to (not including) the current state, from memory or, for a task
    /// whose history this engine does not hold, from the Redis stream.
    /// - Returns: whether every missed event was replayed (false: the client only gets the current state).
    private static func replay(_ l: Listener, client: ClientConnection, current: TaskSnapshot, after: UInt64) -> Bool {
        guard let events = l.engine.missedEvents(id: current.id, after: after, current: current.seq) else { return false }
        for event in events {
            client.sendProgress(WireMessage(progressUpdate(current.asOf(event), replayed: true)), task: current.id,
                                seq: event.seq, urgent: true)
        }
        return true
    }
}
