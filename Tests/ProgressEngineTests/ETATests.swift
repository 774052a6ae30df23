import Testing
@testable import ProgressEngine

@Suite("ETA: completion records")
struct ETATests {
    @Test("completion records carry the category and how stepped stages spent their time")
    func recordProfiles() throws {
        let clock = ManualClock(0)
        let engine = try makeEngine(clock: clock)
        try engine.createTask(id: "t", templateId: "sd", category: "image_generation", options: TaskOptions())
        clock.advance(1)
        try engine.updateStage(id: "t", stage: 2, status: .inProgress, progress: 0, message: .none)
        clock.advance(2)  // the first step is slow
        try engine.update(key: TaskKey(owning: "t"), describe: { "t" }, step: 1, total: 4, message: .none)
        for s in 2...4 {
            clock.advance(1)
            try engine.update(key: TaskKey(owning: "t"), describe: { "t" }, step: Int64(s), total: 4, message: .none)
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
            try engine.recordCompletion(json: #"{"template_id":"sd","total_duration":1,"stage_profiles":{"2":{"head":1}}}"#)
        }
        expectError(-6) {
            try engine.recordCompletion(json: #"{"template_id":"sd","total_duration":1,"stage_profiles":{"x":{}}}"#)
        }
    }
}
