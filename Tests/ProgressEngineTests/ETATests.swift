import Testing
@testable import ProgressEngine

/// The ETA fields of a task's TaskProgress.
private func eta(_ engine: EngineCore, _ id: String) throws -> (seconds: Double?, confidence: Double?, at: String?) {
    let t = try parsed(engine.taskJSON(id: id))
    return (number(t["eta_seconds"]), number(t["eta_confidence"]), string(t["eta"]))
}

private func step(_ engine: EngineCore, _ id: String, _ step: Int64, of total: Int64) throws {
    try engine.update(key: TaskKey(owning: id), describe: { id }, step: step, total: total, message: .none)
}

/// `count` identical completion records of an image_generation template.
private func record(_ engine: EngineCore, template: String, quality: String? = nil, gpu: String? = nil,
                    category: String? = "image_generation", durations: [Int: Double],
                    profiles: String? = nil, count: Int = 5) throws {
    var fields = [#""template_id":"\#(template)""#, #""total_duration":\#(durations.values.reduce(0, +))"#]
    if let quality { fields.append(#""quality":"\#(quality)""#) }
    if let gpu { fields.append(#""resource_config":{"gpu":"\#(gpu)"}"#) }
    if let category { fields.append(#""template_category":"\#(category)""#) }
    let stages = durations.keys.sorted().map { #""\#($0)":\#(durations[$0]!)"# }.joined(separator: ",")
    fields.append(#""stage_durations":{\#(stages)}"#)
    if let profiles { fields.append(#""stage_profiles":\#(profiles)"#) }
    for _ in 0..<count { try engine.recordCompletion(json: "{" + fields.joined(separator: ",") + "}") }
}

private func options(quality: String? = nil, gpu: String? = nil) -> TaskOptions {
    var o = TaskOptions()
    o.quality = quality
    if let gpu { o.resourceConfig = .object([("gpu", .string(gpu))]) }
    return o
}

@Suite("ETA: prediction from history and live pace")
struct ETATests {
    @Test("no history: the live pace alone, later stages priced by their weight; nothing to say while queued")
    func liveRateOnly() throws {
        let clock = ManualClock(1_000)
        let engine = try makeEngine(clock: clock)
        try engine.createTask(id: "t", templateId: "fresh", category: "image_generation", options: TaskOptions())
        #expect(try eta(engine, "t").seconds == nil)
        clock.advance(10)
        try step(engine, "t", 1, of: 10)
        for s in 2...5 {
            clock.advance(2)
            try step(engine, "t", Int64(s), of: 10)
        }
        // 2 s per step = 20 s per generation stage; half of it left, then post-processing (weight 0.10 against
        // generation's 0.70) at the same pace: 10 + 20 × 0.1 / 0.7.
        let e = try eta(engine, "t")
        #expect(e.seconds == 12.857)
        #expect(e.at == ISO8601.format(1_018 + 12.857))
        // The unknown post-processing is the whole uncertainty: 1 / (1 + 2.857 / 12.857).
        #expect(e.confidence == 0.818)
    }

    @Test("a slow first step and a stall do not throw the live pace off")
    func unequalSteps() throws {
        let clock = ManualClock(0)
        let engine = try makeEngine(clock: clock)
        try engine.createTask(id: "t", templateId: "fresh", category: "image_generation", options: TaskOptions())
        try engine.updateStage(id: "t", stage: 2, status: .inProgress, progress: 0, message: .none)
        clock.advance(5)  // warm-up and the first step
        try step(engine, "t", 1, of: 10)
        for (s, seconds) in zip(2...6, [1.0, 1, 6, 1, 1]) {  // a 6 s stall at step 4
            clock.advance(seconds)
            try step(engine, "t", Int64(s), of: 10)
        }
        // Median pace 1 s per step: 4 steps left, and post-processing at 10 s × 0.1 / 0.7.
        #expect(try eta(engine, "t").seconds == 5.429)
    }

    @Test("steps faster than the step clock's tick: the pace is measured over many ticks, not read as 0 or a tick",
          arguments: [0.001, 0.003, 0.0105])
    func coarseStepClock(stepSeconds: Double) throws {
        // The same run timed by a precise clock and by one that reads steps in 4 ms ticks (the kernel's coarse
        // clock at 250 Hz). Read per report, the coarse intervals are mostly 0 for 1 ms steps (a median pace of
        // 0) and 0 or 4 ms for 3 ms ones (a median off by a third).
        func run(_ clock: ManualClock) throws -> Double {
            let engine = try makeEngine(clock: clock)
            try engine.createTask(id: "t", templateId: "fresh", category: "image_generation", options: TaskOptions())
            try engine.updateStage(id: "t", stage: 2, status: .inProgress, progress: 0, message: .none)
            for s in 1...400 {
                clock.advance(stepSeconds)
                try step(engine, "t", Int64(s), of: 1000)
            }
            return try #require(eta(engine, "t").seconds)
        }
        let precise = try run(ManualClock(0))
        let coarse = try run(ManualClock(0, stepTick: 0.004))
        // 600 steps left, then post-processing (weight 0.10 against generation's 0.70) at the same pace.
        let expected = (600 + 1000 * 0.1 / 0.7) * stepSeconds
        #expect(abs(precise - expected) / expected < 0.02, "precise clock: \(precise) s against \(expected) s")
        #expect(abs(coarse - precise) / precise < 0.05, "coarse clock: \(coarse) s against \(precise) s")
    }

    @Test("report times in ticks: intervals shorter than the sample span run on; the stage's last one is kept")
    func liveRateFolding() {
        var live = LiveRate()
        live.enter(stage: 2)
        let span = LiveRate.sampleSpan(tick: 0.004)  // 64 ms
        live.note(progress: 0.01, steps: 100, at: 0, minSpan: span)
        // 1 ms steps read in 4 ms ticks: a sample once 16 ticks have passed, over the steps they hold.
        for s in 2...80 {
            let t = Double((s - 1) / 4) * 0.004
            live.note(progress: Double(s) / 100, steps: 100, at: t, minSpan: span)
        }
        #expect(live.count == 1)
        #expect(live.lastProgress == 0.8 && abs(live.lastTime - 0.076) < 1e-12)
        #expect(abs(live.sortedSamples()[0] - 0.064 / 0.64) < 1e-9)  // 64 ms for 64 steps: 0.1 s per stage
        // The report that ends the stage 4 ms after the last sample still makes one, so the samples end at 1.
        var short = LiveRate()
        short.enter(stage: 2)
        short.note(progress: 0.5, steps: 2, at: 10, minSpan: span)
        short.note(progress: 1, steps: 2, at: 10.048, minSpan: span)
        #expect(short.count == 1 && short.sampleProgress == 1 && short.completeTime == 10.048)
        // A precise clock (no span) samples every report, as before.
        var precise = LiveRate()
        precise.enter(stage: 2)
        for s in 1...5 { precise.note(progress: Double(s) / 10, steps: 10, at: Double(s) * 0.001) }
        #expect(precise.count == 4)
    }

    @Test("the system's step clock reports its tick, which sets the live pace's shortest interval")
    func systemStepTick() {
        let tick = SystemClock().stepResolution
        #expect(tick > 0 && tick <= 0.01, "CLOCK_REALTIME_COARSE resolution \(tick) s")
        #expect(LiveRate.sampleSpan(tick: tick) == 16 * tick)
        #expect(ManualClock(0).stepResolution == 0)
    }

    @Test("hand-built history: each stage's duration, conditioned on the time already spent in the current one")
    func historyOnly() throws {
        let clock = ManualClock(2_000)
        let engine = try makeEngine(clock: clock)
        try record(engine, template: "sd", durations: [0: 5, 1: 10, 2: 60, 3: 4])
        try engine.createTask(id: "t", templateId: "sd", category: "image_generation", options: TaskOptions())
        // Queued: the recent waits (5 s), then loading, generation, post-processing.
        #expect(try eta(engine, "t").seconds == 79)
        clock.advance(7)
        try engine.event(id: "t", name: "model_loading", dataJSON: nil)
        var e = try eta(engine, "t")
        #expect(e.seconds == 74)
        // Five identical records: no spread, so only the prior for a small sample keeps it from certainty.
        #expect(e.confidence! > 0.9 && e.confidence! < 1)
        // Another task's event moves the engine's time on 5 s: 5 s of loading are left, the ETA stays put.
        clock.advance(5)
        try engine.createTask(id: "other", templateId: "x", category: nil, options: TaskOptions())
        e = try eta(engine, "t")
        #expect(e.seconds == 74)
        #expect(e.at == ISO8601.format(2_007 + 74))
    }

    @Test("live pace blended with history's seconds per step, the live part weighing more as steps accrue")
    func blend() throws {
        let clock = ManualClock(3_000)
        let engine = try makeEngine(clock: clock)
        try record(engine, template: "sd", durations: [0: 0, 1: 2, 2: 60, 3: 4],
                   profiles: #"{"2":{"steps":20,"head":0,"step_seconds":3,"tail":1.5}}"#)
        try engine.createTask(id: "t", templateId: "sd", category: "image_generation", options: TaskOptions())
        try step(engine, "t", 1, of: 10)
        // No interval measured yet: history's 3 s per step × 10 steps, 90 % left, the 1.5 s decode, post 4 s.
        #expect(try eta(engine, "t").seconds == 32.5)
        for s in 2...5 {
            clock.advance(2)
            try step(engine, "t", Int64(s), of: 10)
        }
        // 4 intervals at 20 s per stage against history's 30: weights 4/8 and 4/8 → 25 s; half left. The run goes
        // 1.5 × faster than history, so its decode takes 1.5 / 1.5 s.
        #expect(try eta(engine, "t").seconds == 0.5 * 25 + 1 + 4)
        for s in 6...9 {
            clock.advance(2)
            try step(engine, "t", Int64(s), of: 10)
        }
        // 8 intervals: 8/12 × 20 + 4/12 × 30 = 23.333 s per stage; a tenth left.
        #expect(try eta(engine, "t").seconds == 7.333)
        clock.advance(2)
        try step(engine, "t", 10, of: 10)
        clock.advance(1)
        try engine.createTask(id: "clock", templateId: "x", category: nil, options: TaskOptions())
        // All steps done 1 s ago, as long as this run's decode was expected to take: nothing of it is left but
        // the post-processing; counted from the last step.
        #expect(try eta(engine, "t").seconds == 1 + 4)
    }

    @Test("similar-task matching: template + quality + resources, then template + quality, template, category")
    func matchingLevels() throws {
        let clock = ManualClock(4_000)
        let engine = try makeEngine(clock: clock)
        try record(engine, template: "sd", quality: "high", gpu: "A100", durations: [2: 10, 3: 0], count: 3)
        try record(engine, template: "sd", quality: "high", gpu: "T4", durations: [2: 40, 3: 0], count: 3)
        try record(engine, template: "sd", quality: "low", gpu: "A100", durations: [2: 5, 3: 0], count: 3)
        try record(engine, template: "sd2", quality: "low", durations: [2: 7, 3: 0], count: 3)
        try record(engine, template: "other", category: "audio_generation", durations: [2: 9, 3: 0], count: 3)
        try record(engine, template: "uncategorised", category: nil, durations: [2: 11, 3: 0], count: 3)
        let cases: [(String, String, String?, String?, Double?)] = [
            ("a100", "sd", "high", "A100", 10), ("t4", "sd", "high", "T4", 40),
            ("low-h100", "sd", "low", "H100", 5),  // no record on H100: template + quality
            ("sd2-high", "sd2", "high", nil, 7),  // no record of that quality: template
            ("new", "brand-new", nil, nil, 9),  // no record of the template: its category
        ]
        for (id, template, quality, gpu, expected) in cases {
            let category = id == "new" ? "audio_generation" : "image_generation"
            try engine.createTask(id: id, templateId: template, category: category,
                                  options: options(quality: quality, gpu: gpu))
            try engine.updateStage(id: id, stage: 2, status: .inProgress, progress: 0, message: .none)
            #expect(try eta(engine, id).seconds == expected, "\(id)")
        }
        // Records imported without a category serve their own template only.
        try engine.createTask(id: "none", templateId: "brand-new", category: "video_generation", options: TaskOptions())
        try engine.updateStage(id: "none", stage: 2, status: .inProgress, progress: 0, message: .none)
        #expect(try eta(engine, "none").seconds == nil)
    }

    @Test("a spread-out history gives a lower confidence than a consistent one")
    func confidenceFollowsSpread() throws {
        let engine = try makeEngine()
        try record(engine, template: "steady", durations: [2: 30, 3: 2], count: 10)
        for (i, seconds) in [10.0, 20, 30, 45, 60, 80, 15, 25, 35, 90].enumerated() {
            try engine.recordCompletion(json: #"{"template_id":"jumpy","total_duration":\#(seconds + 2),"#
                + #""stage_durations":{"2":\#(seconds),"3":2},"task_id":"r\#(i)"}"#)
        }
        for template in ["steady", "jumpy"] {
            try engine.createTask(id: template, templateId: template, category: "image_generation",
                                  options: TaskOptions())
            try engine.updateStage(id: template, stage: 2, status: .inProgress, progress: 0, message: .none)
        }
        let steady = try eta(engine, "steady").confidence ?? 0, jumpy = try eta(engine, "jumpy").confidence ?? 1
        #expect(steady > 0.9 && steady < 1)
        #expect(jumpy < 0.7)
    }

    @Test("one run in twenty that stalled does not make the others' agreement uncertain (a robust spread)")
    func confidenceRobustToOutlier() throws {
        let engine = try makeEngine()
        try record(engine, template: "sd", durations: [2: 30, 3: 2], count: 19)
        try engine.recordCompletion(json: #"{"template_id":"sd","total_duration":632,"#
            + #""stage_durations":{"2":30,"3":602},"task_id":"stalled"}"#)
        try engine.createTask(id: "t", templateId: "sd", category: "image_generation", options: TaskOptions())
        try engine.updateStage(id: "t", stage: 2, status: .inProgress, progress: 0, message: .none)
        // The mean square of the post-processing (18,000 s², a 134 s deviation on 32 s) would put it near 0.2.
        let confidence = try eta(engine, "t").confidence ?? 0
        #expect(confidence > 0.9)
        #expect(try eta(engine, "t").seconds == 32)
    }

    @Test("agreeing records: confidence grows with their count (one record is no certainty)")
    func confidenceFollowsCount() throws {
        func confidence(records count: Int) throws -> Double {
            let engine = try makeEngine()  // one engine each: no other template's records to fall back on
            try record(engine, template: "sd", durations: [2: 30, 3: 2], count: count)
            try engine.createTask(id: "t", templateId: "sd", category: "image_generation", options: TaskOptions())
            try engine.updateStage(id: "t", stage: 2, status: .inProgress, progress: 0, message: .none)
            return try eta(engine, "t").confidence!
        }
        let one = try confidence(records: 1), few = try confidence(records: 4), many = try confidence(records: 64)
        #expect(one < few && few < many && many < 1, "\(one) \(few) \(many)")
        #expect(one <= 0.85)
        #expect(many >= 0.95)
    }

    @Test("queued tasks: forecast from the tasks executing and those ahead in the same line")
    func queueForecast() throws {
        let clock = ManualClock(100)
        let engine = try makeEngine(clock: clock)
        try record(engine, template: "q", durations: [0: 0, 1: 2, 2: 10, 3: 1])
        for id in ["running", "ahead", "me"] {
            try engine.createTask(id: id, templateId: "q", category: "image_generation", options: TaskOptions())
        }
        try engine.updateStage(id: "running", stage: 1, status: .inProgress, progress: 0, message: .none)
        // One worker: free at 113, runs "ahead" for 13 s, then "me" starts at 126 and runs 13 s.
        #expect(try eta(engine, "running").seconds == 13)
        #expect(try eta(engine, "ahead").seconds == 26)
        #expect(try eta(engine, "me").seconds == 39)
        // The running task fails at 105 and "ahead" starts: "me" waits for it alone (done at 118).
        clock.advance(5)
        try engine.fail(id: "running", error: "oom")
        try engine.updateStage(id: "ahead", stage: 1, status: .inProgress, progress: 0, message: .none)
        #expect(try eta(engine, "me").seconds == 31)
        #expect(try eta(engine, "me").at == ISO8601.format(131))
        // A long line: the first 64 ahead are forecast one by one, the rest at their mean; 70 ahead of "last"
        // ("me" and 69 more), each 13 s, after "ahead" is done at 118.
        for i in 0..<70 {
            try engine.createTask(id: i < 69 ? "wait\(i)" : "last", templateId: "q", category: "image_generation",
                                  options: TaskOptions())
        }
        #expect(try eta(engine, "last").seconds == 13 + 70 * 13 + 13)
    }

    @Test("finished tasks: completed at completed_at with 0 s, failed and cancelled without; batch ETA is the latest")
    func terminalAndBatch() throws {
        let clock = ManualClock(5_000)
        let engine = try makeEngine(clock: clock)
        try record(engine, template: "b", durations: [0: 0, 1: 0, 2: 20, 3: 0])
        var o = TaskOptions()
        o.batchId = "batch"
        for id in ["done", "live", "gone"] {
            try engine.createTask(id: id, templateId: "b", category: "image_generation", options: o)
            try engine.updateStage(id: id, stage: 2, status: .inProgress, progress: 0, message: .none)
        }
        clock.advance(3)
        try engine.complete(id: "done")
        try engine.fail(id: "gone", error: "lost")
        let done = try parsed(engine.taskJSON(id: "done"))
        #expect(number(done["eta_seconds"]) == 0)
        #expect(number(done["eta_confidence"]) == 1)
        #expect(string(done["eta"]) == string(done["completed_at"]))
        #expect(try eta(engine, "gone").seconds == nil && eta(engine, "gone").at == nil)
        // "live" entered generation at 5000 and has 17 s of its 20 left at 5003: ETA 5020.
        let batch = try parsed(engine.batchJSON(batchId: "batch", taskIds: nil))
        #expect(string(batch["eta"]) == ISO8601.format(5_020))
        #expect(string(batch["tasks"]?["done"]?["eta"]) == ISO8601.format(5_003))
        #expect(batch["tasks"]?["gone"]?["eta"] == .null)
        // A task whose ETA is unknown makes the batch's unknown.
        try engine.createTask(id: "mystery", templateId: "unknown", category: nil, options: o)
        #expect(try parsed(engine.batchJSON(batchId: "batch", taskIds: nil))["eta"] == .null)
    }

    @Test("completion records carry the category and how stepped stages spent their time")
    func recordProfiles() throws {
        let clock = ManualClock(0)
        let engine = try makeEngine(clock: clock)
        try engine.createTask(id: "t", templateId: "sd", category: "image_generation", options: TaskOptions())
        clock.advance(1)
        try engine.updateStage(id: "t", stage: 2, status: .inProgress, progress: 0, message: .none)
        clock.advance(2)  // the first step is slow
        try step(engine, "t", 1, of: 4)
        for s in 2...4 {
            clock.advance(1)
            try step(engine, "t", Int64(s), of: 4)
        }
        clock.advance(2)  // a decode after the last step
        try engine.updateStage(id: "t", stage: 3, status: .inProgress, progress: 0, message: .none)
        clock.advance(1)
        try engine.complete(id: "t")
        let records = try parsed(engine.etaRecordsJSON(templateId: "sd", quality: nil))
        guard case let .array(list)? = records["records"], let r = list.first else {
            Issue.record("no record")
            return
        }
        #expect(string(r["template_category"]) == "image_generation")
        let profile = r["stage_profiles"]?["2"]
        #expect(number(profile?["steps"]) == 4)
        #expect(number(profile?["head"]) == 2)
        #expect(number(profile?["step_seconds"]) == 1)
        #expect(number(profile?["tail"]) == 2)
        #expect(number(r["stage_durations"]?["2"]) == 7)
        // Imported records take the same fields; bad ones are refused.
        try engine.recordCompletion(json: r.serialized())
        expectError(-5) {
            try engine.recordCompletion(json: #"{"template_id":"sd","total_duration":1,"#
                + #""stage_profiles":{"2":{"head":-1,"step_seconds":1}}}"#)
        }
        expectError(-6) {
            try engine.recordCompletion(json: #"{"template_id":"sd","total_duration":1,"#
                + #""stage_profiles":{"2":{"head":1}}}"#)
        }
        expectError(-6) {
            try engine.recordCompletion(json: #"{"template_id":"sd","total_duration":1,"stage_profiles":{"x":{}}}"#)
        }
    }
}
