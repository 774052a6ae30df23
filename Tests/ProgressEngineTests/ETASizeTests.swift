import Glibc
import Testing
@testable import ProgressEngine

private func etaSeconds(_ engine: EngineCore, _ id: String) throws -> Double? {
    number(try parsed(engine.taskJSON(id: id))["eta_seconds"])
}

private func step(_ engine: EngineCore, _ id: String, _ step: Int64, of total: Int64) throws {
    try engine.update(key: TaskKey(owning: id), describe: { id }, step: step, total: total, message: .none)
}

/// `count` identical completion records of template "sd" (image_generation), with optional extra members.
private func record(_ engine: EngineCore, durations: [Int: Double], extra: [String] = [], count: Int = 5) throws {
    let stages = durations.keys.sorted().map { #""\#($0)":\#(durations[$0]!)"# }.joined(separator: ",")
    let fields = [#""template_id":"sd""#, #""template_category":"image_generation""#,
                  #""total_duration":\#(durations.values.reduce(0, +))"#, #""stage_durations":{\#(stages)}"#] + extra
    for _ in 0..<count { try engine.recordCompletion(json: "{" + fields.joined(separator: ",") + "}") }
}

private func sized(_ members: [(String, JSONValue)]) -> TaskOptions {
    var o = TaskOptions()
    o.metadata = .object([("workload", .object(members))])
    return o
}

@Suite("ETA: the job's size (metadata.workload) and how its pace changes")
struct ETASizeTests {
    @Test("a workload in metadata picks the records of the nearest sizes, from creation on")
    func workloadNarrowsHistory() throws {
        let engine = try makeEngine(clock: ManualClock(1_000))
        try record(engine, durations: [0: 0, 1: 1, 2: 20, 3: 1], extra: [#""workload":{"steps":20}"#])
        try record(engine, durations: [0: 0, 1: 1, 2: 50, 3: 1], extra: [#""workload":{"steps":50}"#])
        try engine.createTask(id: "big", templateId: "sd", category: "image_generation",
                              options: sized([("steps", .number(50))]))
        try engine.createTask(id: "small", templateId: "sd", category: "image_generation",
                              options: sized([("steps", .number(20)), ("note", .string("ignored"))]))
        // Queued, no wait in history: loading, generation and post-processing of the five runs of its size.
        #expect(try etaSeconds(engine, "big") == 52)
        #expect(try etaSeconds(engine, "small") == 22)
        // Sizes given under other names are not comparable: the whole history, as without a workload.
        try engine.createTask(id: "frames", templateId: "sd", category: "image_generation",
                              options: sized([("frames", .number(50))]))
        try engine.createTask(id: "plain", templateId: "sd", category: "image_generation", options: TaskOptions())
        let plain = try etaSeconds(engine, "plain")
        #expect(plain != nil && plain != 52 && plain != 22)
        #expect(try etaSeconds(engine, "frames") == plain)
    }

    @Test("the workload: positive numbers kept by name, anything else in metadata skipped")
    func workloadFromMetadata() throws {
        let metadata = JSONValue.object([("workload", .object([
            ("steps", .number(30)), ("megapixels", .number(1.5)), ("bad", .number(-1)), ("name", .string("x")),
        ])), ("other", .number(1))])
        let workload = try #require(Workload(metadata: metadata))
        #expect(workload.values.map(\.0) == ["megapixels", "steps"])
        #expect(Workload(metadata: .object([("workload", .object([("steps", .number(0))]))])) == nil)
        #expect(Workload(metadata: .object([("other", .number(1))])) == nil)
        #expect(Workload(metadata: nil) == nil)
        let near = try #require(Workload(metadata: .object([("workload", .object([
            ("steps", .number(60)), ("megapixels", .number(1.5)),
        ]))])))
        #expect(abs(workload.distance(to: near)! - log(2.0)) < 1e-12)
        let other = try #require(Workload(metadata: .object([("workload", .object([("steps", .number(30))]))])))
        #expect(workload.distance(to: other) == nil)
    }

    @Test("completion records keep the workload of their task; imported ones are checked")
    func recordsCarryWorkload() throws {
        let clock = ManualClock(0)
        let engine = try makeEngine(clock: clock)
        try engine.createTask(id: "t", templateId: "sd", category: "image_generation",
                              options: sized([("steps", .number(4)), ("megapixels", .number(1))]))
        clock.advance(1)
        try engine.complete(id: "t")
        let records = try parsed(engine.etaRecordsJSON(templateId: "sd", quality: nil))
        guard case let .array(list)? = records["records"], let r = list.first else {
            Issue.record("no record")
            return
        }
        #expect(number(r["workload"]?["steps"]) == 4)
        #expect(number(r["workload"]?["megapixels"]) == 1)
        try engine.recordCompletion(json: r.serialized())
        expectError(-5) {
            try engine.recordCompletion(json: #"{"template_id":"sd","total_duration":1,"workload":{"steps":-1}}"#)
        }
        expectError(-6) {
            try engine.recordCompletion(json: #"{"template_id":"sd","total_duration":1,"workload":{"steps":"x"}}"#)
        }
        expectError(-6) {
            try engine.recordCompletion(json: #"{"template_id":"sd","total_duration":1,"workload":[1]}"#)
        }
    }

    @Test("a stage's profile measures how its pace changed from its earlier intervals to its newest")
    func driftMeasured() throws {
        // Pace a × (1 + r × progress) with a = 40 s per stage and r = 1, reported every step of 40.
        var live = LiveRate()
        live.enter(stage: 2)
        var t = 10.0
        live.note(progress: 1 / 40, steps: 40, at: t)
        for i in 2...40 {
            t += 1 + (Double(i) - 0.5) / 40
            live.note(progress: Double(i) / 40, steps: 40, at: t)
        }
        let profile = try #require(StageProfile.measured(live, startedAt: 0, endedAt: t + 2))
        #expect(abs(profile.drift! - 1) < 1e-3)
        // Too few intervals to compare two spans: no drift.
        var short = LiveRate()
        short.enter(stage: 2)
        for i in 1...10 { short.note(progress: Double(i) / 10, steps: 10, at: Double(i)) }
        #expect(StageProfile.measured(short, startedAt: 0, endedAt: 11)?.drift == nil)
    }

    @Test("a pace that grows with progress: what is left goes at the mean pace still to come")
    func driftApplied() throws {
        let clock = ManualClock(0)
        let engine = try makeEngine(clock: clock)
        try record(engine, durations: [0: 0, 1: 0, 2: 15, 3: 0],
                   extra: [#""stage_profiles":{"2":{"steps":10,"head":0,"step_seconds":1,"tail":0,"drift":1}}"#])
        try engine.createTask(id: "t", templateId: "sd", category: "image_generation", options: TaskOptions())
        try step(engine, "t", 1, of: 10)
        for s in 2...5 {
            clock.advance(1)
            try step(engine, "t", Int64(s), of: 10)
        }
        // Live: 10 s per stage measured around progress 0.3, history 10 s at progress 1; the rest (0.5...1) goes
        // at 1 + (1 + 0.5) / 2 = 1.75 times the pace at 0: 10 × 1.75 / 1.3 live, 10 × 1.75 / 2 history, half each.
        let expected = 0.5 * (0.5 * 10 * 1.75 / 1.3 + 0.5 * 10 * 1.75 / 2)
        #expect(try etaSeconds(engine, "t") == (expected * 1000).rounded() / 1000)
    }

    @Test("what follows the last step runs at this run's speed relative to history's")
    func tailAtRunSpeed() throws {
        let clock = ManualClock(0)
        let engine = try makeEngine(clock: clock)
        try record(engine, durations: [0: 0, 1: 0, 2: 20, 3: 0],
                   extra: [#""stage_profiles":{"2":{"steps":10,"head":0,"step_seconds":1,"tail":10}}"#])
        try engine.createTask(id: "t", templateId: "sd", category: "image_generation", options: TaskOptions())
        try step(engine, "t", 1, of: 10)
        for s in 2...5 {
            clock.advance(1.2)
            try step(engine, "t", Int64(s), of: 10)
        }
        // 12 s per stage live against history's 10: a 1.2 × slower run. Pace (12 + 10) / 2 for the half left,
        // then the decode at 1.2 × 10 s.
        #expect(try etaSeconds(engine, "t") == 5.5 + 12)
    }

    @Test("a stage's variant (cold / cached load): its history from runs whose same stage ran alike, while it lasts")
    func variantNarrowsCurrentStage() throws {
        let clock = ManualClock(0)
        let engine = try makeEngine(clock: clock)
        try record(engine, durations: [0: 0, 1: 20, 2: 10, 3: 1], extra: [#""stage_variants":{"1":"cold"}"#])
        try record(engine, durations: [0: 0, 1: 1, 2: 10, 3: 1], extra: [#""stage_variants":{"1":"cached"}"#])
        for (id, variant) in [("cold", #"{"variant":"cold"}"#), ("cached", #"{"variant":"cached"}"#), ("plain", nil)] {
            try engine.createTask(id: id, templateId: "sd", category: "image_generation", options: TaskOptions())
            try engine.event(id: id, name: "model_loading", dataJSON: variant)
        }
        // The load of runs that loaded alike, then generation and post-processing.
        #expect(try etaSeconds(engine, "cold") == 20 + 10 + 1)
        #expect(try etaSeconds(engine, "cached") == 1 + 10 + 1)
        let plain = try #require(try etaSeconds(engine, "plain"))
        #expect(plain > 12 && plain < 31)
        // The completed task's record keeps its variants; bad ones are refused.
        clock.advance(2)
        try engine.event(id: "cold", name: "generation", dataJSON: nil)
        try engine.complete(id: "cold")
        let records = try parsed(engine.etaRecordsJSON(templateId: "sd", quality: nil))
        guard case let .array(list)? = records["records"], let r = list.last else {
            Issue.record("no record")
            return
        }
        #expect(string(r["stage_variants"]?["1"]) == "cold")
        expectError(-1) { try engine.event(id: "plain", name: "model_loading", dataJSON: #"{"variant":""}"#) }
        expectError(-6) { try engine.event(id: "plain", name: "model_loading", dataJSON: #"{"variant":1}"#) }
        expectError(-6) {
            try engine.recordCompletion(json: #"{"template_id":"sd","total_duration":1,"stage_variants":{"1":2}}"#)
        }
    }

    @Test("stages that grow with the size: every run of the group moved to the task's size by a fitted power law")
    func sizeScalingFromWholeGroup() throws {
        let engine = try makeEngine(clock: ManualClock(1_000))
        // Generation grows as the steps, post-processing as the megapixels, the load as neither.
        for (steps, megapixels) in [(20.0, 1.0), (20.0, 2.0), (40.0, 1.0), (40.0, 2.0)] {
            try record(engine, durations: [0: 0, 1: 3, 2: steps / 2, 3: megapixels],
                       extra: [#""workload":{"steps":\#(steps),"megapixels":\#(megapixels)}"#], count: 3)
        }
        // Beyond every size recorded: 80 steps at 4 MP. The nearest runs alone (40 steps, 2 MP) would say 3 + 20 + 2.
        try engine.createTask(id: "big", templateId: "sd", category: "image_generation",
                              options: sized([("steps", .number(80)), ("megapixels", .number(4))]))
        #expect(try etaSeconds(engine, "big") == 3 + 40 + 4)
        // Between sizes: 30 steps at 1.5 MP (log-linear: 10 × 1.5 and 1 × 1.5).
        try engine.createTask(id: "mid", templateId: "sd", category: "image_generation",
                              options: sized([("steps", .number(30)), ("megapixels", .number(1.5))]))
        let mid = try #require(try etaSeconds(engine, "mid"))
        #expect(abs(mid - (3 + 15 + 1.5)) < 0.01)
        // A record of another size arriving changes the fit (the cached narrowing is dropped).
        try record(engine, durations: [0: 0, 1: 3, 2: 160, 3: 4],
                   extra: [#""workload":{"steps":80,"megapixels":4}"#], count: 12)
        let after = try #require(try etaSeconds(engine, "big"))
        #expect(after > 3 + 40 + 4 + 50)
    }

    @Test("the fit: slopes of the log sizes, 0 for a name that never varies, none for too few records")
    func sizeScalingSlopes() {
        let points = (0..<10).map { i -> ([Double], Double) in
            let x = Double(i % 5)
            return ([x, 2], 1.5 * x + 0.5)  // the second name is constant
        }
        let slopes = SizeScaling.slopes(points, dimension: 2)
        #expect(slopes != nil)
        #expect(abs((slopes?[0] ?? 0) - 1.5) < 0.01)
        #expect(abs(slopes?[1] ?? 1) < 1e-9)
        #expect(SizeScaling.slopes(Array(points.prefix(SizeScaling.minimumRecords - 1)), dimension: 2) == nil)
        // Bounded: a steep law is cut at maxSlope.
        let steep = (0..<10).map { i in ([Double(i) * 0.01], Double(i) * 0.5) }
        #expect(SizeScaling.slopes(steep, dimension: 1)?[0] == SizeScaling.maxSlope)
    }

    @Test("a stepped stage: its warm-up, its steps and what follows them each scaled by their own law")
    func sizeScalingStepsApartFromWarmUp() throws {
        let engine = try makeEngine(clock: ManualClock(1_000))
        // 2 s of warm-up whatever the size, then 1 s per step: the first report comes 3 s in (warm-up and step 1).
        for steps in [10, 20, 40] {
            try record(engine, durations: [0: 0, 1: 1, 2: Double(2 + steps), 3: 1],
                       extra: [#""workload":{"steps":\#(steps)}"#,
                               #""stage_profiles":{"2":{"steps":\#(steps),"head":3,"step_seconds":1,"tail":0}}"#],
                       count: 3)
        }
        // A power law of the whole stage (12, 22, 42 s) would give 80 steps about 75 s; warm-up + steps give 82.
        try engine.createTask(id: "t", templateId: "sd", category: "image_generation",
                              options: sized([("steps", .number(80))]))
        let eta = try #require(try etaSeconds(engine, "t"))
        #expect(abs(eta - (1 + 82 + 1)) < 0.01)
    }

    @Test("the runs moved to a size are the nearest ones, newest first among equals")
    func sizeScalingNearest() throws {
        var records: [CompletionRecord] = []
        for (i, steps) in [10, 10, 20, 40, 80, 160, 320, 640].enumerated() {
            var r = try CompletionRecord.parse(#"{"template_id":"sd","total_duration":\#(steps),"#
                + #""stage_durations":{"2":\#(steps)},"workload":{"steps":\#(steps)}}"#, now: Double(i))
            r.taskId = "r\(i)"
            records.append(r)
        }
        let scaling = try #require(SizeScaling(records, names: ["steps"]))
        let target = try #require(Workload(metadata: .object([("workload", .object([("steps", .number(12))]))])))
        let nearest = scaling.records(scaledTo: target, nearest: 3)
        #expect(nearest.map(\.taskId) == ["r0", "r1", "r2"])
        // Every duration moved to 12 steps (a slope of 1).
        for r in nearest { #expect(abs(r.stageDurations[0].1 - 12) < 1e-4) }
        #expect(scaling.records(scaledTo: target).count == records.count)
    }
}
