import Testing
@testable import ProgressEngine

/// Inputs the fuzz targets (fuzz/README.md) found crashing, kept as tests. Each is also in fuzz/corpus/<target>/
/// as crash-*, so every fuzz run replays it first.
@Suite("Fuzz regressions")
struct FuzzRegressionTests {
    /// fuzz/corpus/apply/crash-huge-timestamp: a runner's options_json "timestamp" of 1e57 (finite, >= 0, so
    /// accepted) made every TaskProgress JSON of the task trap in ISO8601.format (Double -> Int64 overflow):
    /// the runner's process, or the listener thread on GET /api/v1/progress/tasks/ID.
    @Test("a task created with a timestamp beyond year 9999 is served, not a trap")
    func hugeTimestamp() throws {
        let engine = try makeEngine()
        defer { engine.close() }
        let options = try TaskOptions.parse(#"{"timestamp":1e57}"#)
        try engine.createTask(id: "t", templateId: "x", category: nil, options: options)
        try engine.event(id: "t", name: "execution_progress", dataJSON: #"{"step":1,"total_steps":2,"timestamp":1e300}"#)
        let task = try parsed(try engine.taskJSON(id: "t"))
        #expect(string(task["created_at"])?.hasPrefix("9999-12-31T23:59:59.99") == true)
        _ = try parsed(try engine.historyJSON(id: "t", afterSeq: 0))
        _ = try parsed(try engine.logsJSON(id: "t", since: 0, minLevel: .debug))
    }

    @Test("ISO8601.format clamps to years 0000...9999 and never traps", arguments: [
        (1e57, "9999-12-31T23:59:59.99"), (253_402_300_800.0, "9999-12-31T23:59:59.99"),
        (-1e300, "0000-01-01T00:00:00.000Z"), (Double.nan, "1970-01-01T00:00:00.000Z"),
        (Double.infinity, "9999-12-31T23:59:59.99"), (0.0, "1970-01-01T00:00:00.000Z"),
    ])
    func isoFormatExtremes(epoch: Double, prefix: String) {
        let text = ISO8601.format(epoch)
        #expect(text.hasPrefix(prefix), "\(text)")
        #expect(ISO8601.parse(text) != nil, "\(text) does not parse back")
    }
}
