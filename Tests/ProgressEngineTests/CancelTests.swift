import Testing
@testable import ProgressEngine

/// Cancel requests on the engine that holds the task, on explicit times: no threads, no sockets, no sleeps.
@Suite("Cancel requests")
struct CancelTests {
    private func requested(_ engine: EngineCore, _ id: String) throws -> Bool {
        try engine.cancelRequested(key: TaskKey(owning: id), describe: { id })
    }

    private func logMessages(_ engine: EngineCore, _ id: String) throws -> [String] {
        guard case let .array(entries)? = try parsed(engine.logsJSON(id: id, since: 0, minLevel: .debug))["logs"] else {
            return []
        }
        return entries.compactMap { string($0["message"]) }
    }

    @Test("a request is recorded once, shown, read by the runner, and ends when the runner cancels")
    func requestReadAcknowledge() throws {
        let clock = ManualClock(1_000)
        let engine = try makeEngine(clock: clock)
        try engine.createTask(id: "t", templateId: "sdxl", category: "image_generation", options: TaskOptions())
        try engine.update(key: TaskKey(owning: "t"), describe: { "t" }, step: 3, total: 10, message: .none)
        #expect(try !requested(engine, "t"))
        var t = try parsed(engine.taskJSON(id: "t"))
        #expect(t["cancel_requested"] == .bool(false) && t["cancel_reason"] == .null)
        let seqBefore = try engine.snapshot(id: "t").seq

        clock.advance(2)
        try engine.requestCancel(id: "t", reason: "user pressed stop")
        #expect(try requested(engine, "t"))
        t = try parsed(engine.taskJSON(id: "t"))
        #expect(t["cancel_requested"] == .bool(true) && string(t["cancel_reason"]) == "user pressed stop")
        #expect(string(t["status"]) == "executing", "a request changes nothing else: the runner decides")
        #expect(number(t["seq"]) == Double(seqBefore + 1))
        #expect(try engine.withTask(id: "t", isUpdate: false) { $0.lastChangeUrgent }, "a request goes out at once")
        let history = try parsed(engine.historyJSON(id: "t", afterSeq: seqBefore))
        guard case let .array(events)? = history["events"] else { Issue.record("no events"); return }
        #expect(events.map { string($0["type"]) } == ["cancel_requested"])
        #expect(try logMessages(engine, "t").contains { $0.hasPrefix("cancel requested (user pressed stop)") })

        // Asking again changes nothing (the first reason stays).
        try engine.requestCancel(id: "t", reason: "again")
        #expect(try engine.snapshot(id: "t").seq == seqBefore + 1)
        #expect(string(try parsed(engine.taskJSON(id: "t"))["cancel_reason"]) == "user pressed stop")

        // The runner goes on reporting until it answers; then the request no longer stands.
        try engine.update(key: TaskKey(owning: "t"), describe: { "t" }, step: 4, total: 10, message: .none)
        try engine.cancel(id: "t", reason: "user pressed stop")
        #expect(try !requested(engine, "t"))
        t = try parsed(engine.taskJSON(id: "t"))
        #expect(string(t["status"]) == "cancelled" && string(t["error"]) == "user pressed stop")
        #expect(t["cancel_requested"] == .bool(false) && t["cancel_reason"] == .null)
    }

    @Test("unknown, finished, a reason too long: refused, nothing recorded")
    func refusals() throws {
        let engine = try makeEngine()
        expectError(EngineError.notFound("").status) { try engine.requestCancel(id: "nope", reason: nil) }
        expectError(EngineError.notFound("").status) { _ = try requested(engine, "nope") }
        expectError(EngineError.invalidArgument("").status) { try engine.requestCancel(id: "", reason: nil) }
        let finishers: [(String, () throws -> Void)] = [
            ("done", { try engine.complete(id: "done") }),
            ("failed", { try engine.fail(id: "failed", error: "boom") }),
            ("cancelled", { try engine.cancel(id: "cancelled", reason: nil) }),
        ]
        for (id, finish) in finishers {
            try engine.createTask(id: id, templateId: "tpl", category: nil, options: TaskOptions())
            try finish()
            let seq = try engine.snapshot(id: id).seq
            expectError(EngineError.state("").status) { try engine.requestCancel(id: id, reason: nil) }
            #expect(try engine.snapshot(id: id).seq == seq)
            #expect(try !requested(engine, id))
        }
        try engine.createTask(id: "long", templateId: "tpl", category: nil, options: TaskOptions())
        expectError(EngineError.range("").status) {
            try engine.requestCancel(id: "long", reason: String(repeating: "é", count: 513))
        }
        try engine.requestCancel(id: "long", reason: String(repeating: "é", count: 512))
        #expect(try requested(engine, "long"))
        // Counted as nothing the runner did wrong: no refused update.
        #expect(engine.counters().invalidUpdates == 0)
    }

    @Test("not answered within cancel_timeout_seconds: one warning in the task's log, the request stands")
    func timeout() throws {
        let clock = ManualClock(5_000)
        let engine = try makeEngine(#"{"cancel_timeout_seconds": 5}"#, clock: clock)
        try engine.createTask(id: "slow", templateId: "tpl", category: nil, options: TaskOptions())
        try engine.createTask(id: "quick", templateId: "tpl", category: nil, options: TaskOptions())
        try engine.requestCancel(id: "slow", reason: nil)
        try engine.requestCancel(id: "quick", reason: nil)
        func warnings(_ id: String) throws -> Int {
            try logMessages(engine, id).filter { $0.contains("is not answered") }.count
        }
        clock.advance(4)
        try engine.cancel(id: "quick", reason: nil)
        engine.maintenanceRound()
        #expect(try warnings("slow") == 0)
        clock.advance(1.5)
        engine.maintenanceRound()
        #expect(try warnings("slow") == 1)
        #expect(try warnings("quick") == 0, "answered in time")
        clock.advance(60)
        engine.maintenanceRound()
        #expect(try warnings("slow") == 1, "warned once")
        #expect(try requested(engine, "slow"))
        #expect(string(try parsed(engine.taskJSON(id: "slow"))["status"]) == "queued", "the engine stops no runner")
        #expect(engine.cancelWatch.withLock { $0.isEmpty })
    }

    @Test("stored and restored with the task; a replay shows it from its own event on")
    func storedAndReplayed() throws {
        let clock = ManualClock(1_700_000_000)
        let engine = try makeEngine(clock: clock)
        try engine.createTask(id: "r", templateId: "tpl", category: nil, options: TaskOptions())
        try engine.update(key: TaskKey(owning: "r"), describe: { "r" }, step: 1, total: 4, message: .none)
        try engine.requestCancel(id: "r", reason: "why")
        try engine.update(key: TaskKey(owning: "r"), describe: { "r" }, step: 2, total: 4, message: .none)
        let snapshot = try engine.snapshot(id: "r")
        let stored = try StoredTask.parse(StoredTask.json(snapshot))
        #expect(stored.cancelPending && stored.cancelRequest?.reason == "why")
        let restored = TaskSnapshot(TaskRecord(restoring: stored))
        #expect(restored.cancelPending && restored.cancelRequest?.reason == "why")

        var events: [HistoryEvent] = []
        try engine.withTask(id: "r", isUpdate: false) { task in task.history.forEach { events.append($0) } }
        let requestSeq = try #require(events.first { $0.type == .cancelRequested }?.seq)
        for e in events {
            #expect(snapshot.asOf(e).cancelPending == (e.seq >= requestSeq), "event \(e.seq) \(e.type.name)")
        }
    }

    @Test("a request read from Redis applies to a task this engine runs; mirrors, finished, unknown tasks ignore it")
    func appliedFromRedis() throws {
        let engine = try makeEngine()
        try engine.createTask(id: "own", templateId: "tpl", category: nil, options: TaskOptions())
        // Before Redis acknowledged the task's first write, a request found there was for an earlier task "own".
        engine.applyCancelRequest(id: "own", reason: "stale")
        #expect(try !requested(engine, "own"))
        engine.ackWrite(id: "own", seq: 1, logs: 0)
        engine.applyCancelRequest(id: "own", reason: "from the fleet")
        #expect(try requested(engine, "own"))
        #expect(string(try parsed(engine.taskJSON(id: "own"))["cancel_reason"]) == "from the fleet")
        engine.applyCancelRequest(id: "ghost", reason: nil)
        try engine.createTask(id: "done", templateId: "tpl", category: nil, options: TaskOptions())
        try engine.complete(id: "done")
        engine.ackWrite(id: "done", seq: 2, logs: 0)
        let doneSeq = try engine.snapshot(id: "done").seq
        engine.applyCancelRequest(id: "done", reason: nil)
        #expect(try engine.snapshot(id: "done").seq == doneSeq)

        // A mirror of another engine's task takes the request from that engine's state, never records its own.
        let other = try makeEngine()
        try other.createTask(id: "m", templateId: "tpl", category: nil, options: TaskOptions())
        func mirror(from seq: UInt64) throws {
            var events: [HistoryEvent] = []
            try other.withTask(id: "m", isUpdate: false) { task in task.history.forEach { events.append($0) } }
            let stored = try StoredTask.parse(StoredTask.json(try other.snapshot(id: "m")))
            engine.applyRemote(stored, events: events.filter { $0.seq >= seq }, firstSeq: seq, complete: true, logs: [])
        }
        try mirror(from: 1)
        let seq = try engine.snapshot(id: "m").seq
        engine.applyCancelRequest(id: "m", reason: nil)
        #expect(try engine.snapshot(id: "m").seq == seq && !requested(engine, "m"))
        // Without Redis there is no way to the engine that runs it.
        expectError(EngineError.notFound("").status) { try engine.requestCancel(id: "m", reason: nil) }
        try other.requestCancel(id: "m", reason: "stop")
        try mirror(from: seq + 1)
        #expect(try requested(engine, "m"))
        #expect(try engine.snapshot(id: "m").cancelRequest?.seq == other.snapshot(id: "m").cancelRequest?.seq)
        try other.cancel(id: "m", reason: "stop")
        try mirror(from: seq + 2)
        #expect(try !requested(engine, "m") && engine.snapshot(id: "m").status == .cancelled)
    }

    @Test("cancel_timeout_seconds must be a positive number of seconds")
    func config() throws {
        #expect(try EngineConfig.parse(nil).cancelTimeoutSeconds == 60)
        #expect(try EngineConfig.parse(#"{"cancel_timeout_seconds": 0.5}"#).cancelTimeoutSeconds == 0.5)
        for bad in [#"{"cancel_timeout_seconds": 0}"#, #"{"cancel_timeout_seconds": -1}"#,
                    #"{"cancel_timeout_seconds": "60"}"#] {
            expectError(EngineError.config("").status) { _ = try EngineConfig.parse(bad) }
        }
    }

    @Test("the Swift API: requestCancel, cancelRequested, TaskProgress.cancelRequested")
    func swiftAPI() throws {
        let engine = try Engine()
        defer { engine.close() }
        try engine.createTask("s", templateID: "tpl")
        #expect(try !engine.cancelRequested("s"))
        try engine.requestCancel("s", reason: "enough")
        #expect(try engine.cancelRequested("s"))
        let task = try engine.task("s")
        #expect(task.cancelRequested && task.cancelReason == "enough")
        try engine.cancel("s", reason: "enough")
        #expect(try !engine.cancelRequested("s"))
        #expect(try !engine.task("s").cancelRequested)
        #expect(throws: ProgressError.self) { try engine.requestCancel("s") }
    }
}
