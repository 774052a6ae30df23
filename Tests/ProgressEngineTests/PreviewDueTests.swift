import Glibc
import Testing
@testable import ProgressEngine

/// `progress_preview_due` against what `progress_preview_pixels` actually takes: the preview files written
/// (their names carry the milestone or step) are compared with the steps at which the engine said "due".
@Suite("progress_preview_due")
struct PreviewDueTests {
    /// An engine writing previews into a folder of the test's own, with a one-stage template ("flat"), so overall
    /// progress is step / total.
    private static func engine(_ options: String) throws -> (EngineCore, String) {
        var template = Array("/tmp/preview-due-XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else { throw EngineError.io("mkdtemp") }
        let dir = String(cString: made)
        let engine = try makeEngine(#"{"preview_dir": "\#(dir)", \#(options)}"#)
        try engine.registerTemplate(id: "flat", stagesJSON: #"[{"name": "sampling", "weight": 1}]"#)
        return (engine, dir)
    }

    /// The label of each preview file (STEM_LABEL.png), sorted by label as a number (steps and milestones grow).
    private static func labels(in dir: String) -> [String] {
        guard let handle = opendir(dir) else { return [] }
        defer { closedir(handle) }
        var out: [String] = []
        while let entry = readdir(handle) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            guard name.hasSuffix(".png"), let cut = name.lastIndex(of: "_") else { continue }
            out.append(String(name[name.index(after: cut)...].dropLast(4)))
            unlink(dir + "/" + name)
        }
        rmdir(dir)
        return out.sorted { Int($0.filter(\.isNumber)) ?? 0 < Int($1.filter(\.isNumber)) ?? 0 }
    }

    private static func offer(_ engine: EngineCore, _ id: String) throws {
        let pixels = [UInt8](repeating: 128, count: 16)
        try pixels.withUnsafeBufferPointer { buffer in
            try engine.previewPixels(id: id, pixels: buffer.baseAddress!, width: 4, height: 4, stride: 4, channels: 1)
        }
    }

    private static func isDue(_ engine: EngineCore, _ id: String) throws -> Bool {
        try engine.previewIsDue(key: TaskKey(owning: id), describe: { id })
    }

    @Test("every N steps: due exactly at the steps whose previews are written; an offer not made stays due")
    func everySteps() throws {
        let (engine, dir) = try PreviewDueTests.engine(#""preview_every_steps": 4"#)
        try engine.createTask(id: "p", templateId: "flat", category: nil, options: TaskOptions())
        var dueAt: [Int64] = []
        for step in Int64(1)...24 {
            try engine.update(key: TaskKey(owning: "p"), describe: { "p" }, step: step, total: 24, message: .none)
            let due = try PreviewDueTests.isDue(engine, "p")
            if step == 4 {
                #expect(due)
                #expect(try PreviewDueTests.isDue(engine, "p"), "asking marks nothing taken")
                continue
            }
            if due { dueAt.append(step) }
            try PreviewDueTests.offer(engine, "p")
            #expect(try !PreviewDueTests.isDue(engine, "p"), "step \(step): still due after the offer")
        }
        #expect(dueAt == [5, 8, 12, 16, 20, 24])
        engine.close()  // the preview thread writes what was queued first
        #expect(PreviewDueTests.labels(in: dir) == dueAt.map { "s\($0)" })
    }

    @Test("milestones: crossing two at once is one preview; a finished task is never due")
    func milestones() throws {
        let (engine, dir) = try PreviewDueTests.engine(#""preview_milestones": [25, 50, 75]"#)
        try engine.createTask(id: "m", templateId: "flat", category: nil, options: TaskOptions())
        var dueAt: [Int64] = []
        for step: Int64 in [1, 2, 6, 7, 8, 9, 10] {
            try engine.update(key: TaskKey(owning: "m"), describe: { "m" }, step: step, total: 10, message: .none)
            if try PreviewDueTests.isDue(engine, "m") { dueAt.append(step) }
            try PreviewDueTests.offer(engine, "m")
            #expect(try !PreviewDueTests.isDue(engine, "m"))
        }
        #expect(dueAt == [6, 8])  // 60 % crosses 25 and 50 together; 80 % crosses 75
        try engine.complete(id: "m")
        #expect(try !PreviewDueTests.isDue(engine, "m"))
        engine.close()
        #expect(PreviewDueTests.labels(in: dir) == ["50", "75"])
    }

    @Test("an attached counter's steps count, as progress_preview_pixels sees them")
    func counterSteps() throws {
        let (engine, dir) = try PreviewDueTests.engine(#""preview_every_steps": 5"#)
        defer { engine.close(); _ = PreviewDueTests.labels(in: dir) }
        try engine.createTask(id: "c", templateId: "flat", category: nil, options: TaskOptions())
        let counter = UnsafeMutablePointer<CLongLong>.allocate(capacity: 2)
        defer { counter.deallocate() }
        counter[0] = 4
        counter[1] = 10
        try engine.attachCounter(id: "c", pointer: counter)
        #expect(try !PreviewDueTests.isDue(engine, "c"))
        counter[0] = 5  // no maintenance round runs in these tests: only the ask itself reads it
        #expect(try PreviewDueTests.isDue(engine, "c"))
    }

    @Test("errors: unknown task, invalid id")
    func errors() throws {
        let (engine, dir) = try PreviewDueTests.engine(#""preview_every_steps": 1"#)
        defer { engine.close(); _ = PreviewDueTests.labels(in: dir) }
        expectError(EngineError.notFound("").status) { _ = try PreviewDueTests.isDue(engine, "nobody") }
        expectError(EngineError.invalidArgument("").status) { _ = try PreviewDueTests.isDue(engine, "bad\u{1}id") }
    }
}
