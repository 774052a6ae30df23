import Testing
@testable import ProgressEngine

@Suite("Redis storage: the parts that need no server (tests/redis runs the rest against redis-server)")
struct StorageTests {
    @Test("redis_url: host, port, password, database; mistakes are configuration errors naming what to fix")
    func urls() throws {
        #expect(try RedisURL.parse("redis://h") == RedisURL(host: "h", port: 6379, password: nil, database: 0))
        #expect(try RedisURL.parse("redis://10.0.0.1:7000/3") == RedisURL(host: "10.0.0.1", port: 7000, password: nil, database: 3))
        #expect(try RedisURL.parse("redis://:s3cr@t@h:1/") == RedisURL(host: "h", port: 1, password: "s3cr@t", database: 0))
        #expect(try RedisURL.parse("redis://user:pw@h:2") == RedisURL(host: "h", port: 2, user: "user", password: "pw", database: 0))
        #expect(try RedisURL.parse("redis://user:pw@h:2").display == "redis://user@h:2/0")
        #expect(try RedisURL.parse("redis://pw@h:2") == RedisURL(host: "h", port: 2, password: "pw", database: 0))
        #expect(try RedisURL.parse("redis://:pw@h:2").display == "redis://h:2/0")
        for bad in ["h:6379", "http://h", "redis://", "redis://:1", "redis://h:0", "redis://h:x", "redis://h:1/db",
                    "redis://@h", "redis://h:1/-1"] {
            #expect(throws: EngineError.self) { try RedisURL.parse(bad) }
            do { _ = try RedisURL.parse(bad) } catch let e as EngineError {
                #expect(e.status == -7 && e.message.contains("redis_url"))
            } catch {}
        }
    }

    @Test("Keys: one hash tag per task, braces and % escaped inside it, readable otherwise")
    func keys() {
        let k = RedisKeys(namespace: "ns")
        #expect(k.state("job-1") == "ns:task:{job-1}:state")
        #expect(k.events("a}b{c%") == "ns:task:{a%7Db%7Bc%25}:events")
        #expect(k.logs("é x") == "ns:task:{é x}:logs")
        #expect(k.batch("b{1}") == "ns:batch:{b%7B1%7D}")
        #expect(k.eta("tpl") == "ns:eta:{tpl}" && k.templates == "ns:templates" && k.heartbeats == "ns:heartbeats")
        #expect(k.channel == "ns:updates")
        #expect(k.previews("a}b") == "ns:task:{a%7Db}:previews")
        // Distinct ids never share keys.
        #expect(RedisKeys.tag("a%7Db") != RedisKeys.tag("a}b"))
        // The tag is exactly the escaped id: the first "}" after the first "{" ends it.
        let key = k.state("x}y")
        let open = key.firstIndex(of: "{")!, close = key[open...].firstIndex(of: "}")!
        #expect(key[key.index(after: open)..<close] == "x%7Dy")
    }

    @Test("Preview URLs: the task id as task_id when previews are shared, every byte outside A-Z a-z 0-9 -._~ escaped")
    func previewURLs() {
        #expect(EngineCore.previewURL(name: "a-1_25.png", taskId: nil) == "/api/v1/previews/a-1_25.png")
        #expect(EngineCore.previewURL(name: "a-1_25.png", taskId: "job-1.x_y~z")
            == "/api/v1/previews/a-1_25.png?task_id=job-1.x_y~z")
        #expect(EngineCore.previewURL(name: "n.png", taskId: "a b&c=d+e/f?g#h%{i}é")
            == "/api/v1/previews/n.png?task_id=a%20b%26c%3Dd%2Be%2Ff%3Fg%23h%25%7Bi%7D%C3%A9")
    }

    @Test("redis_preview_max_bytes: 2 MiB by default, 0 (none) up to the 32 MiB a listener serves")
    func previewCap() throws {
        #expect(try EngineConfig.parse(nil).redisPreviewMaxBytes == 2 << 20)
        #expect(try EngineConfig.parse(#"{"redis_preview_max_bytes": 0}"#).redisPreviewMaxBytes == 0)
        #expect(try EngineConfig.parse(#"{"redis_preview_max_bytes": 33554432}"#).redisPreviewMaxBytes == 32 << 20)
        for bad in [#"{"redis_preview_max_bytes": -1}"#, #"{"redis_preview_max_bytes": 33554433}"#,
                    #"{"redis_preview_max_bytes": "1"}"#, #"{"redis_preview_max_bytes": 1.5}"#] {
            #expect(throws: EngineError.self) { try EngineConfig.parse(bad) }
        }
    }

    @Test("Other writes (templates, ETA records, previews) wait for Redis within 10,000 and 64 MiB, however long")
    func extrasBound() throws {
        // Nothing listens on port 1: every write waits, and the writer thread keeps taking its inbox meanwhile.
        let engine = try makeEngine(#"{"redis_url": "redis://127.0.0.1:1/0"}"#)
        defer { engine.close() }
        let writer = try #require(engine.storeWriter)
        let metrics = try #require(engine.redisMetrics)
        let png = [UInt8](repeating: 7, count: 20 << 20)
        for i in 0..<4 { writer.enqueue(commands: [["HSET", "k", RedisArgument("\(i).png"), RedisArgument(png)]]) }
        #expect(metrics.droppedWrites.load(ordering: .relaxed) == 1)
        for _ in 0..<(RedisWriter.maxQueuedExtras - 3) { writer.enqueue(commands: [["HSET", "k", "f", "v"]]) }
        #expect(metrics.droppedWrites.load(ordering: .relaxed) == 1)
        writer.enqueue(commands: [["HSET", "k", "f", "v"]])
        #expect(metrics.droppedWrites.load(ordering: .relaxed) == 2)
    }

    @Test("A task restored from its stored JSON is the same task: stages, progress, times, seq, error")
    func roundTrip() throws {
        let clock = ManualClock(1_700_000_000.123456)
        let engine = try EngineCore(config: EngineConfig(), clock: clock, background: false)
        defer { engine.close() }
        try engine.createTask(id: "t", templateId: "tpl", category: "video_generation",
                              options: try TaskOptions.parse(#"{"quality":"hd","batch_id":"b","metadata":{"k":[1,2]}}"#))
        clock.advance(1.000123)
        try engine.update(key: TaskKey(owning: "t"), describe: { "t" }, step: 3, total: 7, message: .string("three"))
        clock.advance(0.5)
        try engine.fail(id: "t", error: "boom")
        let original = try engine.snapshot(id: "t")
        let stored = try StoredTask.parse(StoredTask.json(original))
        let restored = TaskSnapshot(TaskRecord(restoring: stored))
        var a = JSONWriter(), b = JSONWriter()
        TaskJSON.write(original, to: &a)
        TaskJSON.write(restored, to: &b)
        #expect(a.output == b.output)
        #expect(restored.seq == original.seq && restored.error == "boom" && restored.stages[2].progress == 3.0 / 7)
        #expect(restored.stages.map(\.duration) == original.stages.map(\.duration))
    }

    @Test("A flood of progress steps is thinned to the first and last of each stage; stage changes all stay")
    func thinning() {
        func e(_ seq: UInt64, _ type: HistoryType, stage: Int = 0) -> HistoryEvent {
            HistoryEvent(seq: seq, timestamp: 0, type: type, stage: stage, progress: 0, overallProgress: 0,
                         status: .executing)
        }
        let few = [e(1, .progress), e(2, .progress)]
        #expect(StoredEvents.thin(few, limit: 64).map(\.seq) == [1, 2])
        var many = (1...100).map { e($0, .progress) }
        many[49] = e(50, .stage)
        many.append(e(101, .completed))
        #expect(StoredEvents.thin(many, limit: 64).map(\.seq) == [1, 49, 50, 100, 101])
        // A step that enters the next stage (the main stage, from the queue) is a stage change: it stays, and so
        // does the last step of the stage it left.
        let crossing = (1...100).map { e($0, .progress, stage: $0 <= 40 ? 1 : 2) }
        #expect(StoredEvents.thin(crossing, limit: 64).map(\.seq) == [1, 40, 41, 100])
    }
}
