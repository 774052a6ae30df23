import Testing
@testable import ProgressEngine

/// Parses the engine's JSON output for assertions.
func parsed(_ text: String) throws -> JSONValue {
    try JSONParser.parse(text, context: "test")
}

func number(_ v: JSONValue?) -> Double? {
    if case let .number(n)? = v { return n }
    return nil
}

func string(_ v: JSONValue?) -> String? {
    if case let .string(s)? = v { return s }
    return nil
}

func makeEngine(_ config: String? = nil, clock: ManualClock = ManualClock()) throws -> EngineCore {
    try EngineCore(config: try EngineConfig.parse(config), clock: clock, background: false)
}

func expectError(_ status: Int32, _ body: () throws -> Void, sourceLocation: SourceLocation = #_sourceLocation) {
    do {
        try body()
        Issue.record("expected error \(EngineError.statusName(status)), got success", sourceLocation: sourceLocation)
    } catch let e as EngineError {
        #expect(e.status == status, "\(e.message)", sourceLocation: sourceLocation)
        #expect(!e.message.isEmpty, sourceLocation: sourceLocation)
    } catch {
        Issue.record("unexpected error \(error)", sourceLocation: sourceLocation)
    }
}

@Suite("Engine: stages, progress, durations")
struct EngineTests {
    @Test("image template: overall progress and stage durations match hand-computed values")
    func imageTemplate() throws {
        let clock = ManualClock(1_000)
        let engine = try makeEngine(clock: clock)
        try engine.createTask(id: "img", templateId: "sdxl", category: "image_generation", options: TaskOptions())
        var t = try parsed(engine.taskJSON(id: "img"))
        #expect(string(t["status"]) == "queued")
        #expect(string(t["stages"]?["0"]?["status"]) == "in_progress")
        clock.advance(5.2)
        try engine.updateStage(id: "img", stage: 1, status: .inProgress, progress: 0.5, message: .string("Loading"))
        t = try parsed(engine.taskJSON(id: "img"))
        #expect(string(t["status"]) == "executing")
        #expect(number(t["stages"]?["0"]?["duration"]) == 5.2)
        #expect(number(t["overall_progress"]) == 12.5)  // 100 × (0.05 + 0.15 × 0.5)
        clock.advance(12.8)
        try engine.update(key: TaskKey(owning: "img"), describe: { "img" }, step: 15, total: 30, message: .string("Step 15/30"))
        t = try parsed(engine.taskJSON(id: "img"))
        #expect(number(t["current_stage"]) == 2)
        #expect(number(t["stages"]?["1"]?["duration"]) == 12.8)
        #expect(number(t["overall_progress"]) == 55.0)  // 100 × (0.05 + 0.15 + 0.70 × 0.5)
        #expect(string(t["stages"]?["2"]?["message"]) == "Step 15/30")
        clock.advance(120)
        try engine.updateStage(id: "img", stage: 3, status: .inProgress, progress: 0.5, message: .none)
        t = try parsed(engine.taskJSON(id: "img"))
        #expect(number(t["stages"]?["2"]?["duration"]) == 120)
        #expect(number(t["overall_progress"]) == 95.0)  // 100 × (0.9 + 0.1 × 0.5)
        clock.advance(10)
        try engine.complete(id: "img")
        t = try parsed(engine.taskJSON(id: "img"))
        #expect(string(t["status"]) == "completed")
        #expect(number(t["overall_progress"]) == 100)
        #expect(number(t["stages"]?["3"]?["duration"]) == 10)
        let records = try parsed(engine.etaRecordsJSON(templateId: "sdxl", quality: nil))
        guard case let .array(list)? = records["records"] else { Issue.record("no records"); return }
        #expect(list.count == 1)
        #expect(number(list[0]["total_duration"]) == 148)
        #expect(number(list[0]["stage_durations"]?["2"]) == 120)
    }

    @Test("video template: jumping straight to steps enters frame_generation")
    func videoTemplate() throws {
        let clock = ManualClock(2_000)
        let engine = try makeEngine(clock: clock)
        try engine.createTask(id: "vid", templateId: "video-gen-v1", category: "video_generation", options: TaskOptions())
        clock.advance(3)
        try engine.update(key: TaskKey(owning: "vid"), describe: { "vid" }, step: 6, total: 24, message: .none)
        let t = try parsed(engine.taskJSON(id: "vid"))
        #expect(string(t["stages"]?["2"]?["name"]) == "frame_generation")
        #expect(number(t["current_stage"]) == 2)
        #expect(number(t["overall_progress"]) == 30.0)  // 100 × (0.02 + 0.08 + 0.80 × 0.25)
        #expect(number(t["stages"]?["0"]?["duration"]) == 3)
        #expect(number(t["stages"]?["1"]?["duration"]) == 0)
    }

    @Test("custom template stages are normalised and used")
    func customTemplate() throws {
        let engine = try makeEngine()
        try engine.registerTemplate(id: "my-custom-template", stagesJSON: """
            [{"name":"preprocessing","description":"Preparing data","weight":2},
             {"name":"analysis","weight":3},{"name":"synthesis","weight":4},{"name":"validation","weight":1}]
            """)
        try engine.createTask(id: "c", templateId: "my-custom-template", category: nil, options: TaskOptions())
        var t = try parsed(engine.taskJSON(id: "c"))
        #expect(number(t["total_stages"]) == 4)
        #expect(number(t["stages"]?["1"]?["weight"]) == 0.3)
        #expect(string(t["status"]) == "queued")
        #expect(string(t["stages"]?["0"]?["status"]) == "pending")
        try engine.event(id: "c", name: "analysis", dataJSON: #"{"progress": 0.5}"#)
        t = try parsed(engine.taskJSON(id: "c"))
        #expect(number(t["overall_progress"]) == 35.0)
        #expect(string(t["status"]) == "executing")
    }

    @Test("invalid stage lists are rejected", arguments: [
        "[]", #"[{"name":"a","weight":-1}]"#, #"[{"name":"a","weight":0}]"#, #"[{"name":"","weight":1}]"#,
        #"[{"name":"a","weight":1},{"name":"a","weight":1}]"#, #"[{"name":"a"}]"#, #"{"name":"a"}"#, "[",
        #"[{"name":"a","weight":1,"wieght":2}]"#,
    ])
    func invalidStages(json: String) throws {
        let engine = try makeEngine()
        do {
            try engine.registerTemplate(id: "t", stagesJSON: json)
            Issue.record("accepted \(json)")
        } catch let e as EngineError {
            #expect([-1, -6, -10].contains(e.status))
        }
        // Nothing registered: the generic stages apply.
        try engine.createTask(id: "x", templateId: "t", category: nil, options: TaskOptions())
        #expect(string(try parsed(engine.taskJSON(id: "x"))["stages"]?["1"]?["name"]) == "processing")
    }

    @Test("bad updates change nothing and are counted")
    func badUpdates() throws {
        let engine = try makeEngine()
        try engine.createTask(id: "t", templateId: "x", category: "image_generation", options: TaskOptions())
        try engine.update(key: TaskKey(owning: "t"), describe: { "t" }, step: 3, total: 10, message: .none)
        let before = try engine.taskJSON(id: "t")
        expectError(-5) { try engine.updateStage(id: "t", stage: 2, status: .inProgress, progress: .nan, message: .none) }
        expectError(-5) { try engine.updateStage(id: "t", stage: 2, status: .inProgress, progress: -0.1, message: .none) }
        expectError(-5) { try engine.updateStage(id: "t", stage: 2, status: .inProgress, progress: 1.5, message: .none) }
        expectError(-5) { try engine.updateStage(id: "t", stage: 4, status: .inProgress, progress: 0, message: .none) }
        expectError(-5) { try engine.updateStage(id: "t", stage: -1, status: .inProgress, progress: 0, message: .none) }
        expectError(-1) { try engine.updateStage(id: "t", stage: 3, status: .pending, progress: 0, message: .none) }
        expectError(-4) { try engine.updateStage(id: "t", stage: 1, status: .inProgress, progress: 0, message: .none) }
        expectError(-5) { try engine.update(key: TaskKey(owning: "t"), describe: { "t" }, step: 11, total: 10, message: .none) }
        expectError(-5) { try engine.update(key: TaskKey(owning: "t"), describe: { "t" }, step: 1, total: 0, message: .none) }
        expectError(-5) { try engine.update(key: TaskKey(owning: "t"), describe: { "t" }, step: -1, total: 10, message: .none) }
        expectError(-2) { try engine.update(key: TaskKey(owning: "nope"), describe: { "nope" }, step: 1, total: 2, message: .none) }
        expectError(-6) { try engine.event(id: "t", name: "execution_progress", dataJSON: "{bad json") }
        expectError(-6) { try engine.event(id: "t", name: "execution_progress", dataJSON: #"{"step":"1","total_steps":2}"#) }
        expectError(-6) { try engine.event(id: "t", name: "execution_progress", dataJSON: #"{"step":1,"totl_steps":2}"#) }
        #expect(try engine.taskJSON(id: "t") == before)
        // Unknown events are logged and ignored: no error, no state change.
        try engine.event(id: "t", name: "generation_x", dataJSON: nil)
        #expect(try engine.taskJSON(id: "t") == before)
        #expect(try engine.logsJSON(id: "t", since: 0, minLevel: .debug).contains("unknown event"))
        let stats = try parsed(engine.statsJSON())
        #expect(number(stats["invalid_updates"])! >= 14)
        #expect(number(stats["updates"]) == 1)
    }

    @Test("task ids: empty, too long, control characters are invalid; 256 characters are fine")
    func taskIds() throws {
        let engine = try makeEngine()
        expectError(-1) { try engine.createTask(id: "", templateId: "x", category: nil, options: TaskOptions()) }
        expectError(-1) { try engine.createTask(id: String(repeating: "a", count: 300), templateId: "x", category: nil, options: TaskOptions()) }
        expectError(-1) { try engine.createTask(id: "a\nb", templateId: "x", category: nil, options: TaskOptions()) }
        expectError(-1) { _ = try engine.taskJSON(id: String(repeating: "é", count: 257)) }
        try engine.createTask(id: String(repeating: "é", count: 256), templateId: "x", category: nil, options: TaskOptions())
        try engine.createTask(id: "任务-\"quoted\"</script>", templateId: "x", category: nil, options: TaskOptions())
        let t = try parsed(engine.taskJSON(id: "任务-\"quoted\"</script>"))
        #expect(string(t["task_id"]) == "任务-\"quoted\"</script>")
        #expect(!(try engine.taskJSON(id: "任务-\"quoted\"</script>")).contains("</script>"))
    }

    @Test("duplicate create fails unless resume; terminal tasks accept no updates")
    func lifecycle() throws {
        let engine = try makeEngine()
        try engine.createTask(id: "t", templateId: "x", category: nil, options: TaskOptions())
        expectError(-3) { try engine.createTask(id: "t", templateId: "x", category: nil, options: TaskOptions()) }
        var resume = TaskOptions()
        resume.resume = true
        try engine.createTask(id: "t", templateId: "x", category: nil, options: resume)
        try engine.complete(id: "t")
        expectError(-4) { try engine.update(key: TaskKey(owning: "t"), describe: { "t" }, step: 1, total: 2, message: .none) }
        expectError(-4) { try engine.complete(id: "t") }
        expectError(-4) { try engine.fail(id: "t", error: "late") }
        try engine.createTask(id: "f", templateId: "x", category: nil, options: TaskOptions())
        try engine.event(id: "f", name: "execution_error", dataJSON: #"{"error":"CUDA out of memory"}"#)
        let f = try parsed(engine.taskJSON(id: "f"))
        #expect(string(f["status"]) == "failed")
        #expect(string(f["error"]) == "CUDA out of memory")
        try engine.createTask(id: "c", templateId: "x", category: nil, options: TaskOptions())
        try engine.cancel(id: "c", reason: "user")
        #expect(string(try parsed(engine.taskJSON(id: "c"))["status"]) == "cancelled")
    }

    @Test("a failed stage fails the task")
    func stageFailure() throws {
        let engine = try makeEngine()
        try engine.createTask(id: "t", templateId: "x", category: "image_generation", options: TaskOptions())
        try engine.updateStage(id: "t", stage: 1, status: .failed, progress: 0, message: .string("weights missing"))
        let t = try parsed(engine.taskJSON(id: "t"))
        #expect(string(t["status"]) == "failed")
        #expect(string(t["error"]) == "weights missing")
        #expect(string(t["stages"]?["1"]?["status"]) == "failed")
    }

    @Test("a replayed event shows its stage open when the next step has the same time (the coarse step clock)")
    func replayWithEqualTimes() throws {
        // Steps read the time in 4 ms ticks, clamped to the task's last event: a step right after a precise event
        // gets that event's time, and so does every stage the step finishes.
        let clock = ManualClock(100.0021, stepTick: 0.004)
        let engine = try makeEngine(clock: clock)
        func step(_ id: String, _ n: Int64) throws {
            try engine.update(key: TaskKey(owning: id), describe: { id }, step: n, total: 30, message: .none)
        }
        try engine.createTask(id: "r", templateId: "x", category: "image_generation", options: TaskOptions())
        try engine.updateStage(id: "r", stage: 1, status: .inProgress, progress: 0.5, message: .string("weights"))
        clock.advance(0.0002)
        try step("r", 1)  // enters generation, finishing model_loading at the stage event's time
        clock.advance(0.0002)
        try engine.createTask(id: "q", templateId: "x", category: "image_generation", options: TaskOptions())
        try step("q", 1)  // finishes the queue stage at the creation's time

        func replays(_ id: String) throws -> [(HistoryEvent, TaskSnapshot)] {
            let snapshot = try engine.snapshot(id: id)
            // Read back from its stored form as well: a listener replays another engine's task from Redis.
            let stored = try StoredTask.parse(StoredTask.json(snapshot))
            var events: [HistoryEvent] = []
            try engine.withTask(id: id, isUpdate: false) { task in task.history.forEach { events.append($0) } }
            return events.flatMap { [($0, snapshot.asOf($0)), ($0, stored.asOf($0))] }
        }
        for (e, s) in try replays("r") {
            switch e.seq {
            case 2:  // the stage event: model_loading in progress at 50 %
                #expect(s.stages[1].status == .inProgress && s.stages[1].completedAt == nil && s.stages[1].progress == 0.5)
                #expect(s.stages[0].status == .completed)
            case 3:  // the step: model_loading finished, generation in progress
                #expect(s.stages[1].status == .completed && s.stages[2].status == .inProgress)
                #expect(s.stages[1].completedAt == e.timestamp)
            default:
                break
            }
        }
        for (e, s) in try replays("q") where e.type == .created {
            #expect(s.status == .queued && s.stages[0].status == .pending && s.stages[0].completedAt == nil)
        }
    }

    @Test("explicit timestamps replay a run and may not go backwards")
    func timestamps() throws {
        let engine = try makeEngine(clock: ManualClock(200))
        var options = TaskOptions()
        options.timestamp = 100
        try engine.createTask(id: "r", templateId: "x", category: "image_generation", options: options)
        try engine.event(id: "r", name: "model_loading", dataJSON: #"{"timestamp": 104}"#)
        try engine.event(id: "r", name: "execution_progress", dataJSON: #"{"step":1,"total_steps":4,"timestamp":110}"#)
        expectError(-5) { try engine.event(id: "r", name: "execution_progress", dataJSON: #"{"step":2,"total_steps":4,"timestamp":109}"#) }
        try engine.event(id: "r", name: "execution_complete", dataJSON: #"{"timestamp":130}"#)
        let t = try parsed(engine.taskJSON(id: "r"))
        #expect(string(t["created_at"]) == "1970-01-01T00:01:40.000Z")
        #expect(string(t["completed_at"]) == "1970-01-01T00:02:10.000Z")
        #expect(number(t["stages"]?["0"]?["duration"]) == 4)
        #expect(number(t["stages"]?["1"]?["duration"]) == 6)
        #expect(number(t["stages"]?["2"]?["duration"]) == 20)
    }

    @Test("finished tasks are purged after retention_seconds, active ones never")
    func retention() throws {
        let clock = ManualClock(10_000)
        let engine = try makeEngine(#"{"retention_seconds": 60}"#, clock: clock)
        var options = TaskOptions()
        options.batchId = "b"
        try engine.createTask(id: "done", templateId: "x", category: nil, options: options)
        try engine.createTask(id: "live", templateId: "x", category: nil, options: options)
        try engine.complete(id: "done")
        clock.advance(59)
        engine.sweep(now: clock.now())
        _ = try engine.taskJSON(id: "done")
        clock.advance(2)
        // Past retention it is gone for readers at once, and the sweep frees it.
        expectError(-2) { _ = try engine.taskJSON(id: "done") }
        engine.sweep(now: clock.now())
        clock.advance(1_000_000)
        engine.sweep(now: clock.now())
        _ = try engine.taskJSON(id: "live")
        let stats = try parsed(engine.statsJSON())
        #expect(number(stats["tasks"]) == 1)
        #expect(number(stats["purged_tasks"]) == 1)
        let batch = try parsed(engine.batchJSON(batchId: "b", taskIds: nil))
        #expect(number(batch["total_tasks"]) == 1)
    }

    @Test("history: every event kept in order with increasing seq, the newest 4096")
    func history() throws {
        let clock = ManualClock(0)
        let engine = try makeEngine(#"{"throttle_ms": 100}"#, clock: clock)
        try engine.createTask(id: "h", templateId: "x", category: "image_generation", options: TaskOptions())
        for step in 1...1000 {
            clock.advance(0.001)
            try engine.update(key: TaskKey(owning: "h"), describe: { "h" }, step: Int64(step), total: 1000, message: .none)
        }
        try engine.complete(id: "h")
        let h = try parsed(engine.historyJSON(id: "h", afterSeq: 0))
        guard case let .array(events)? = h["events"] else { Issue.record("no events"); return }
        let seqs = events.compactMap { number($0["seq"]) }
        #expect(seqs == seqs.sorted())
        #expect(Set(seqs).count == seqs.count)
        #expect(seqs.last == 1002)
        #expect(events.count == 1002)
        #expect(string(events.first?["type"]) == "created")
        #expect(string(events.last?["type"]) == "completed")
        let progress = events.filter { string($0["type"]) == "progress" }
        #expect(number(progress.last?["progress"]) == 1.0)
        let tail = try parsed(engine.historyJSON(id: "h", afterSeq: 1001))
        if case let .array(e)? = tail["events"] { #expect(e.count == 1) }
        for step in 1...5000 {
            try engine.createTask(id: "h\(step % 2)", templateId: "x", category: nil, options: { var o = TaskOptions(); o.resume = true; return o }())
        }
        let full = try parsed(engine.historyJSON(id: "h0", afterSeq: 0))
        if case let .array(e)? = full["events"] {
            #expect(e.count == 2500)  // created + 2499 resumed: below the 4096 bound
        }
        try engine.createTask(id: "big", templateId: "x", category: "image_generation", options: TaskOptions())
        for step in 1...5000 {
            try engine.update(key: TaskKey(owning: "big"), describe: { "big" }, step: Int64(step), total: 5000, message: .none)
        }
        let bounded = try parsed(engine.historyJSON(id: "big", afterSeq: 0))
        if case let .array(e)? = bounded["events"] {
            #expect(e.count == 4096)
            #expect(number(bounded["first_seq"]) == Double(5001 - 4096 + 1))
            #expect(number(e.last?["seq"]) == 5001)
        }
    }

    @Test("logs are filtered by level and time, bounded")
    func logs() throws {
        let clock = ManualClock(100)
        let engine = try makeEngine(clock: clock)
        try engine.createTask(id: "l", templateId: "x", category: nil, options: TaskOptions())
        try engine.log(id: "l", level: .debug, message: "d")
        clock.advance(10)
        try engine.log(id: "l", level: .warning, message: "w")
        try engine.event(id: "l", name: "log", dataJSON: #"{"level":"error","message":"e"}"#)
        expectError(-6) { try engine.event(id: "l", name: "log", dataJSON: #"{"level":"loud","message":"e"}"#) }
        let all = try parsed(engine.logsJSON(id: "l", since: 0, minLevel: .debug))
        if case let .array(a)? = all["logs"] { #expect(a.count == 4) }  // the rejected event is logged too
        let warn = try parsed(engine.logsJSON(id: "l", since: 105, minLevel: .warning))
        if case let .array(a)? = warn["logs"] {
            #expect(a.compactMap { string($0["message"]) } == ["w", "e",
                #"rejected update (PROGRESS_E_JSON: log level "loud" is not one of debug, info, warning, error)"#])
        }
        for i in 0..<1500 { try engine.log(id: "l", level: .info, message: "\(i)") }
        let bounded = try parsed(engine.logsJSON(id: "l", since: 0, minLevel: .debug))
        if case let .array(a)? = bounded["logs"] {
            #expect(a.count == 1000)
            #expect(string(a.last?["message"]) == "1499")
        }
    }

    @Test("batch aggregation with and without explicit ids")
    func batch() throws {
        let engine = try makeEngine()
        var options = TaskOptions()
        options.batchId = "batch-001"
        for id in ["task-1", "task-2", "task-3"] {
            try engine.createTask(id: id, templateId: "x", category: "image_generation", options: options)
        }
        try engine.update(key: TaskKey(owning: "task-1"), describe: { "" }, step: 1, total: 2, message: .none)
        try engine.complete(id: "task-2")
        let b = try parsed(engine.batchJSON(batchId: "batch-001", taskIds: nil))
        #expect(number(b["total_tasks"]) == 3)
        #expect(number(b["completed_tasks"]) == 1)
        #expect(number(b["counts"]?["executing"]) == 1)
        // (55 + 100 + 0) / 3: task-3 is still waiting in its queue stage.
        #expect(abs(number(b["overall_progress"])! - 155.0 / 3) < 1e-9)
        let explicit = try parsed(engine.batchJSON(batchId: "batch-001", taskIds: ["task-2", "ghost"]))
        #expect(number(explicit["total_tasks"]) == 1)
        #expect(explicit["missing"] == .array([.string("ghost")]))
    }

    @Test("attached counters are applied by the maintenance round and read a last time on complete")
    func counters() throws {
        let engine = try makeEngine()
        try engine.createTask(id: "k", templateId: "x", category: "image_generation", options: TaskOptions())
        let counter = UnsafeMutablePointer<CLongLong>.allocate(capacity: 2)
        defer { counter.deallocate() }
        counter[0] = 0
        counter[1] = 50
        try engine.attachCounter(id: "k", pointer: counter)
        counter[0] = 10
        engine.maintenanceRound()
        #expect(number(try parsed(engine.taskJSON(id: "k"))["stages"]?["2"]?["progress"]) == 0.2)
        let seq = number(try parsed(engine.taskJSON(id: "k"))["seq"])
        engine.maintenanceRound()  // unchanged: no new event
        #expect(number(try parsed(engine.taskJSON(id: "k"))["seq"]) == seq)
        // A direct update re-syncs the counter, so the poller does not apply the same values again.
        counter[0] = 20
        try engine.update(key: TaskKey(owning: "k"), describe: { "k" }, step: 20, total: 50, message: .string("m"))
        let afterDirect = number(try parsed(engine.taskJSON(id: "k"))["seq"])
        engine.maintenanceRound()
        #expect(number(try parsed(engine.taskJSON(id: "k"))["seq"]) == afterDirect)
        counter[0] = 50
        try engine.complete(id: "k")
        let h = try parsed(engine.historyJSON(id: "k", afterSeq: 0))
        if case let .array(events)? = h["events"] {
            let lastProgress = events.last { string($0["type"]) == "progress" }
            #expect(number(lastProgress?["progress"]) == 1.0)
        }
        expectError(-2) { try engine.detachCounter(id: "k") }
    }

    @Test("configuration: defaults, typos and bad values are errors")
    func config() throws {
        let c = try EngineConfig.parse(nil)
        #expect(c.throttleMs == 100 && c.retentionSeconds == 86_400 && c.namespace == "progress")
        expectError(-7) { _ = try EngineConfig.parse(#"{"throttle":5}"#) }
        expectError(-7) { _ = try EngineConfig.parse(#"{"throttle_ms":"5"}"#) }
        expectError(-7) { _ = try EngineConfig.parse(#"{"throttle_ms":-5}"#) }
        expectError(-7) { _ = try EngineConfig.parse(#"{"retention_seconds":-1}"#) }
        expectError(-7) { _ = try EngineConfig.parse(#"{"preview_milestones":[0, 50]}"#) }
        expectError(-6) { _ = try EngineConfig.parse("{") }
        expectError(-6) { _ = try EngineConfig.parse("[]") }
        expectError(-7) { _ = try EngineCore(config: try EngineConfig.parse(#"{"redis_url":"127.0.0.1:6379"}"#), background: false) }
        expectError(-7) { _ = try EngineCore(config: try EngineConfig.parse(#"{"listen":"127.0.0.1"}"#), background: false) }
        expectError(-7) { _ = try EngineCore(config: try EngineConfig.parse(#"{"listen":"127.0.0.1:99999"}"#), background: false) }
        expectError(-7) { _ = try EngineCore(config: try EngineConfig.parse(#"{"listen":"[::1]:0"}"#), background: false) }
        let full = try EngineConfig.parse(#"{"listen":null,"namespace":"p1","retention_seconds":5,"throttle_ms":0,"dashboard":false}"#)
        #expect(full.retentionSeconds == 5 && full.throttleMs == 0 && !full.dashboard && full.listen == nil)
        // Times a Redis expiry or an interval cannot hold, a heartbeat its 50 ms floor would outrun, a token no
        // header can carry: errors, not a crash or a silent change.
        for bad in [#"{"retention_seconds":1e300}"#, #"{"retention_seconds":3153600001}"#,
                    #"{"heartbeat_timeout_seconds":0.01}"#, #"{"heartbeat_timeout_seconds":1e20}"#,
                    #"{"cancel_timeout_seconds":1e300}"#, #"{"auth_token":" "}"#, #"{"auth_token":"a b"}"#,
                    #"{"auth_token":"tok\n"}"#] {
            expectError(-7) { _ = try EngineConfig.parse(bad) }
        }
        #expect(try EngineConfig.parse(#"{"retention_seconds":3153600000,"heartbeat_timeout_seconds":0.15}"#)
            .heartbeatTimeoutSeconds == 0.15)
    }

    @Test("configuration: a typo names the key meant, and a key given twice is an error")
    func configMistakes() throws {
        func message(_ json: String) -> String {
            do { _ = try EngineConfig.parse(json) } catch let e as EngineError { return e.message } catch {}
            return ""
        }
        #expect(message(#"{"throttle_msec":5}"#).contains(#"unknown key "throttle_msec" in config_json (did you mean "throttle_ms"?); known keys: "#))
        #expect(message(#"{"redis_uri":"redis://x"}"#).contains(#"(did you mean "redis_url"?)"#))
        #expect(message(#"{"Listen":"127.0.0.1:0"}"#).contains(#"(did you mean "listen"?)"#))
        #expect(message(#"{"colour":1}"#).hasPrefix(#"unknown key "colour" in config_json; known keys: allowed_origins, "#))
        #expect(message(#"{"throttle_ms":5,"throttle_ms":10}"#) == #"key "throttle_ms" appears twice in config_json; keep one"#)
        #expect(JSONObjectReader.nearest(to: "max_conections", in: EngineConfig.keys) == "max_connections")
        #expect(JSONObjectReader.nearest(to: "", in: EngineConfig.keys) == nil)
    }
}

@Suite("progress-server configuration")
struct ServerConfigTests {
    @Test("listen defaults when absent, is kept when set, and null or a number is an error")
    func listen() throws {
        let absent = try parsed(ServerConfig.server(fileJSON: #"{"throttle_ms": 50}"#, overrides: [], defaultListen: "127.0.0.1:8000"))
        #expect(string(absent["listen"]) == "127.0.0.1:8000")
        let set = try parsed(ServerConfig.server(fileJSON: #"{"listen": "0.0.0.0:9000"}"#, overrides: [], defaultListen: "x:1"))
        #expect(string(set["listen"]) == "0.0.0.0:9000")
        let overridden = try parsed(ServerConfig.server(fileJSON: #"{"listen": null}"#, overrides: [("listen", "127.0.0.1:0")],
                                                        defaultListen: "x:1"))
        #expect(string(overridden["listen"]) == "127.0.0.1:0")
        for bad in [#"{"listen": null}"#, #"{"listen": 8000}"#] {
            #expect(throws: EngineError.self) { try ServerConfig.server(fileJSON: bad, overrides: [], defaultListen: "x:1") }
        }
    }

    @Test("logged configuration hides auth_token and the Redis password")
    func redacted() throws {
        let json = #"{"listen":"127.0.0.1:0","auth_token":"s3cret","redis_url":"redis://u:pw@h:6379/0","throttle_ms":5}"#
        let shown = ServerConfig.redacted(json)
        #expect(!shown.contains("s3cret") && !shown.contains("pw@"))
        let v = try parsed(shown)
        #expect(string(v["auth_token"]) == "***")
        #expect(string(v["redis_url"]) == "redis://u:***@h:6379/0")
        #expect(number(v["throttle_ms"]) == 5)
        #expect(ServerConfig.maskPassword("redis://:pw@h") == "redis://:***@h")
        #expect(ServerConfig.maskPassword("redis://pw@h") == "redis://***@h")
        #expect(ServerConfig.maskPassword("redis://h:1/0") == "redis://h:1/0")
    }
}
