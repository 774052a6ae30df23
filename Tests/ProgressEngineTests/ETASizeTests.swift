import Glibc
import Testing
@testable import ProgressEngine

private func etaSeconds(_ engine: EngineCore, _ id: String) throws -> Double? {
    number(try parsed(engine.taskJSON(id: id))["eta_seconds"])
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

@Suite("ETA: the job's size (metadata.workload)")
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
}
