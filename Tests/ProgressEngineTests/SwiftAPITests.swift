// The public Swift API (Sources/ProgressEngine/SwiftAPI), through a plain import: what a Swift host sees.
import Glibc
import ProgressEngine
import Testing

/// Expects `body` to throw a `ProgressError` with `code`.
private func expectCode(_ code: ProgressError.Code, _ body: () throws -> Void,
                        sourceLocation: SourceLocation = #_sourceLocation) {
    do {
        try body()
        Issue.record("expected \(code), got success", sourceLocation: sourceLocation)
    } catch let error as ProgressError {
        #expect(error.code == code, "\(error)", sourceLocation: sourceLocation)
        #expect(!error.message.isEmpty, sourceLocation: sourceLocation)
    } catch {
        Issue.record("expected a ProgressError, got \(error)", sourceLocation: sourceLocation)
    }
}

/// The next element of a stream, or nil when it ended.
private func next(_ iterator: inout AsyncStream<TaskProgress>.Iterator) async -> TaskProgress? {
    await iterator.next()
}

@Suite("Swift API")
struct SwiftAPITests {
    @Test("open: defaults, a listener's port, bad configurations as ProgressError, version")
    func open() throws {
        let plain = try Engine()
        #expect(plain.port == nil)
        #expect(!plain.strict)
        plain.close()
        plain.close()  // idempotent

        let listening = try Engine(configJSON: #"{"listen": "127.0.0.1:0"}"#)
        let port = try #require(listening.port)
        #expect(port > 0)
        listening.close()
        #expect(listening.port == nil)

        expectCode(.config) { _ = try Engine(configJSON: #"{"throttle_msec": 5}"#) }  // a typo is an error
        expectCode(.json) { _ = try Engine(configJSON: "{") }
        #expect(Engine.version.split(separator: ".").count == 3)
    }

    @Test("a task's life through the reporting calls, read back as TaskProgress")
    func lifeCycle() throws {
        let engine = try Engine(configJSON: #"{"throttle_ms": 0}"#)
        defer { engine.close() }
        try engine.createTask("t1", templateID: "sdxl", category: "image_generation",
                              options: .init(quality: "high", batchID: "b1"))
        var t = try engine.task("t1")
        #expect(t.taskID == "t1" && t.templateID == "sdxl" && t.category == "image_generation")
        #expect(t.quality == "high" && t.batchID == "b1")
        #expect(t.status == .queued && t.currentStage == 0)
        #expect(t.stages.map(\.name) == ["queue", "model_loading", "generation", "post_processing"])
        #expect(abs(t.stages.map(\.weight).reduce(0, +) - 1) < 1e-9)

        try engine.update("t1", step: 4, total: 10, message: "sampling")
        t = try engine.task("t1")
        #expect(t.status == .executing && t.currentStage == 2)
        #expect(t.stages[2].status == .inProgress && t.stages[2].progress == 0.4)
        #expect(t.stages[2].message == "sampling")
        #expect(abs(t.overallProgress - 48) < 1e-9)  // queue 5 % + loading 15 % + 0.4 x generation 70 %

        try engine.enterStage("t1", stage: 3, message: "encoding")
        t = try engine.task("t1")
        #expect(t.currentStage == 3 && t.stages[2].status == .completed && t.stages[2].duration != nil)
        try engine.updateStage("t1", stage: 3, status: .inProgress, progress: 0.5)
        #expect(try engine.task("t1").stages[3].progress == 0.5)

        try engine.log("t1", level: .warning, "low memory")
        try engine.complete("t1")
        t = try engine.task("t1")
        #expect(t.status == .completed && t.status.isTerminal && t.overallProgress == 100)
        #expect(t.completedAt != nil && t.etaSeconds == 0 && t.eta == t.completedAt)
        #expect(t.seq > 3)

        try engine.createTask("t2", templateID: "sdxl")
        try engine.fail("t2", error: "CUDA out of memory")
        #expect(try engine.task("t2").status == .failed)
        #expect(try engine.task("t2").error == "CUDA out of memory")
        try engine.createTask("t3", templateID: "sdxl")
        try engine.cancel("t3", reason: "user asked")
        #expect(try engine.task("t3").status == .cancelled)
        #expect(try engine.task("t3").error == "user asked")
    }

    @Test("runner-safe: data errors of reporting calls do not throw, unless strict; reads and creation always do")
    func runnerSafe() throws {
        let engine = try Engine()
        defer { engine.close() }
        try engine.createTask("t", templateID: "x")
        try engine.update("t", step: 30, total: 29)                 // past the total: refused, not thrown
        #expect(try engine.task("t").status == .queued)             // and not applied
        try engine.update("nope", step: 1, total: 2)                // unknown task
        try engine.updateStage("t", stage: 99, status: .completed)   // no such stage
        try engine.preview("t", pixels: [0, 0], width: 1, height: 1, channels: 2)  // bad image
        try engine.complete("t")
        try engine.complete("t")                                    // already finished
        try engine.log("gone", "hello")
        try engine.fail("gone")
        try engine.cancel("gone")
        #expect(try engine.task("t").status == .completed)

        expectCode(.notFound) { _ = try engine.task("nope") }
        expectCode(.invalidArgument) { _ = try engine.task("") }
        expectCode(.exists) { try engine.createTask("t", templateID: "x") }
        expectCode(.invalidArgument) { try engine.createTask("bad\u{7}id", templateID: "x") }

        let strict = try Engine(strict: true)
        defer { strict.close() }
        #expect(strict.strict)
        try strict.createTask("t", templateID: "x")
        expectCode(.range) { try strict.update("t", step: 30, total: 29) }
        expectCode(.notFound) { try strict.update("nope", step: 1, total: 2) }
        expectCode(.range) { try strict.updateStage("t", stage: 99, status: .completed) }
        expectCode(.invalidArgument) {
            try strict.preview("t", pixels: [0, 0], width: 1, height: 1, channels: 2)
        }
        expectCode(.invalidArgument) {
            try strict.preview("t", pixels: [0, 0], width: 2, height: 2, channels: 1)  // too few bytes
        }
        try strict.complete("t")
        expectCode(.state) { try strict.complete("t") }
        expectCode(.notFound) { try strict.log("gone", "hello") }
    }

    @Test("preview from a buffer: taken when due, served at previewURL")
    func preview() async throws {
        let engine = try Engine(configJSON: #"{"preview_every_steps": 1}"#)
        defer { engine.close() }
        try engine.createTask("p", templateID: "sdxl", category: "image_generation")
        try engine.update("p", step: 1, total: 4)
        let pixels = [UInt8](repeating: 128, count: 8 * 6 * 3)
        try engine.preview("p", pixels: pixels, width: 8, height: 6, channels: 3)
        // Encoded on the engine's preview thread: wait for it, bounded.
        var url: String?
        for _ in 0..<500 where url == nil {
            url = try engine.task("p").previewURL
            if url == nil { try await Task.sleep(for: .milliseconds(10)) }
        }
        let found = try #require(url)
        #expect(found.hasPrefix("/api/v1/previews/"))
    }

    @Test("batch: tasks, counts, overall progress, missing ids")
    func batch() throws {
        let engine = try Engine()
        defer { engine.close() }
        try engine.createTask("a", templateID: "x", options: .init(batchID: "b"))
        try engine.createTask("c", templateID: "x", options: .init(batchID: "b"))
        try engine.complete("a")
        let b = try engine.batch("b")
        #expect(b.batchID == "b" && b.tasks.map(\.taskID) == ["a", "c"] && b.missing.isEmpty)
        #expect(b.counts[.completed] == 1 && b.counts[.queued] == 1 && b.counts[.failed] == 0)
        #expect(b.overallProgress == (100 + b.tasks[1].overallProgress) / 2)
        let asked = try engine.batch("b", taskIDs: ["a", "zz"])
        #expect(asked.tasks.map(\.taskID) == ["a"] && asked.missing == ["zz"])
        expectCode(.invalidArgument) { _ = try engine.batch("") }
    }

    @Test("changes(of:): the current state first, stage changes at once, steps coalesced, ends at the terminal state")
    func changesCoalesce() async throws {
        // A throttle far longer than the test: any step state delivered after the first could only come from a
        // broken rule, never from timing.
        let engine = try Engine(configJSON: #"{"throttle_ms": 60000}"#)
        defer { engine.close() }
        try engine.createTask("s", templateID: "sdxl", category: "image_generation")
        var states = engine.changes(of: ["s"]).makeAsyncIterator()
        let first = try #require(await next(&states))
        #expect(first.status == .queued && first.currentStage == 0)

        try engine.update("s", step: 1, total: 10)   // enters the main stage: urgent
        let entered = try #require(await next(&states))
        #expect(entered.currentStage == 2 && entered.stages[2].progress == 0.1)

        for step in 2...9 { try engine.update("s", step: step, total: 10) }  // same stage: held by the throttle
        try engine.complete("s")
        var rest: [TaskProgress] = []
        while let state = await next(&states) { rest.append(state) }
        #expect(rest.last?.status == .completed)
        let stepStates = rest.filter { $0.status == .executing && $0.currentStage == 2 }
        #expect(stepStates.isEmpty, "steps 2...9 were coalesced away: \(stepStates.map(\.stages[2].progress))")
        #expect(zip([first, entered] + rest, rest).allSatisfy { $0.seq < $1.seq } || rest.count == 1)
    }

    @Test("changes(of:): stage changes passed between two looks are delivered in order, from the history")
    func changesReplayStages() async throws {
        let engine = try Engine(configJSON: #"{"throttle_ms": 60000}"#)
        defer { engine.close() }
        try engine.createTask("r", templateID: "sdxl", category: "image_generation")
        var states = engine.changes(of: ["r"]).makeAsyncIterator()
        _ = await next(&states)
        // Several stage changes and the completion, faster than the stream looks (it may look in between).
        try engine.enterStage("r", stage: 1)
        try engine.enterStage("r", stage: 2)
        try engine.enterStage("r", stage: 3)
        try engine.complete("r")
        var seen: [TaskProgress] = []
        while let state = await next(&states) { seen.append(state) }
        #expect(seen.map(\.currentStage).filter { $0 < 3 } == [1, 2])
        #expect(seen.map(\.currentStage).contains(3))
        #expect(seen.last?.status == .completed)
        #expect(zip(seen, seen.dropFirst()).allSatisfy { $0.seq < $1.seq })
    }

    @Test("changes(): every task, including ones created later; ends when the engine closes")
    func changesAll() async throws {
        let engine = try Engine(configJSON: #"{"throttle_ms": 0}"#)
        try engine.createTask("before", templateID: "x")
        var states = engine.changes().makeAsyncIterator()
        let first = try #require(await next(&states))
        #expect(first.taskID == "before")
        try engine.createTask("after", templateID: "x")
        var ids: Set<String> = []
        while !ids.contains("after"), let state = await next(&states) { ids.insert(state.taskID) }
        #expect(ids.contains("after"))
        engine.close()
        var left = 0
        while await next(&states) != nil { left += 1 }  // ends instead of waiting for ever
        #expect(left < 10)
    }

    @Test("changes(of:) a task created later: its first state once it exists")
    func changesOfLaterTask() async throws {
        let engine = try Engine()
        defer { engine.close() }
        var states = engine.changes(of: ["later"]).makeAsyncIterator()
        try engine.createTask("other", templateID: "x")
        try engine.createTask("later", templateID: "x")
        let first = try #require(await next(&states))
        #expect(first.taskID == "later" && first.status == .queued)
        try engine.cancel("later")
        var last = first
        while let state = await next(&states) { last = state }
        #expect(last.status == .cancelled)
    }

    @Test("changes(of:) follows the id's bytes: a canonically equivalent id is another task")
    func changesOfNormalisationTwin() async throws {
        let nfc = "caf\u{E9}", nfd = "cafe\u{301}"
        #expect(nfc == nfd && Array(nfc.utf8) != Array(nfd.utf8))  // one String to Swift, two ids to the engine
        let engine = try Engine(configJSON: #"{"throttle_ms": 0}"#)
        defer { engine.close() }
        try engine.createTask(nfc, templateID: "x")
        try engine.createTask(nfd, templateID: "x")
        var states = engine.changes(of: [nfd]).makeAsyncIterator()
        try engine.update(nfc, step: 1, total: 4)
        try engine.cancel(nfc)
        try engine.update(nfd, step: 2, total: 4)
        try engine.cancel(nfd)
        var seen: [TaskProgress] = []
        while let state = await next(&states) { seen.append(state) }
        #expect(!seen.isEmpty && seen.allSatisfy { Array($0.taskID.utf8) == Array(nfd.utf8) })
        #expect(seen.last?.status == .cancelled)
    }

    @Test("ProgressError codes carry the header's pinned status values and names")
    func errorCodes() {
        let codes: [(ProgressError.Code, Int32, String)] = [
            (.invalidArgument, -1, "PROGRESS_E_INVALID_ARGUMENT"), (.notFound, -2, "PROGRESS_E_NOT_FOUND"),
            (.exists, -3, "PROGRESS_E_EXISTS"), (.state, -4, "PROGRESS_E_STATE"), (.range, -5, "PROGRESS_E_RANGE"),
            (.json, -6, "PROGRESS_E_JSON"), (.config, -7, "PROGRESS_E_CONFIG"),
            (.unsupported, -8, "PROGRESS_E_UNSUPPORTED"), (.io, -9, "PROGRESS_E_IO"), (.limit, -10, "PROGRESS_E_LIMIT"),
            (.internal, -11, "PROGRESS_E_INTERNAL"),
        ]
        for (code, status, name) in codes {
            #expect(code.status == status && code.description == name)
            #expect(String(cString: progress_status_string(status)) == name)
        }
        #expect(Set(codes.map(\.0)).count == codes.count)
    }
}
