import Testing
@testable import ProgressEngine

@Suite("JSON parser and writer")
struct JSONTests {
    @Test("valid documents parse", arguments: [
        (#"{"a":[1,-2.5e3,true,false,null,"x"]}"#, 1),
        (#"  "\u00e9\ud83d\ude00\n\"\\\/"  "#, 2),
        ("0", 3), ("-0.0", 4), ("[]", 5), ("{}", 6),
    ])
    func valid(text: String, tag: Int) throws {
        _ = try JSONParser.parse(text, context: "t")
    }

    @Test("invalid documents are rejected with an offset", arguments: [
        "", "{", "[1,]", #"{"a":1,}"#, "01", "1.", "-", "tru", #""abc"#, "\"\u{01}\"", #""\x""#, #""\ud800""#,
        #""\udc00""#, "{} {}", "[1 2]", #"{"a" 1}"#, "NaN", "1e999", #"{1:2}"#,
        String(repeating: "[", count: 100) + String(repeating: "]", count: 100),
    ])
    func invalid(text: String) {
        do {
            _ = try JSONParser.parse(text, context: "t")
            Issue.record("accepted \(text.debugDescription)")
        } catch let e as EngineError {
            #expect(e.status == -6)
            #expect(e.message.contains("offset") || e.message.contains("surrogate") || e.message.contains("UTF-8"))
        } catch {
            Issue.record("\(error)")
        }
    }

    @Test("invalid UTF-8 inside a string is rejected")
    func badUTF8() {
        let bytes: [UInt8] = [0x22, 0xff, 0xfe, 0x22]
        #expect(throws: EngineError.self) {
            try bytes.withUnsafeBufferPointer { try JSONParser.parse(bytes: $0, context: "t") }
        }
    }

    @Test("writer output parses back to the same value and escapes HTML-significant characters")
    func roundTrip() throws {
        let value = JSONValue.object([("k\"<", .array([.number(1.5), .string("a\n\u{1}</script>&"), .bool(true), .null]))])
        let text = value.serialized()
        #expect(!text.contains("<") && !text.contains(">") && !text.contains("&"))
        #expect(try JSONParser.parse(text, context: "t") == value)
    }

    @Test("strings are written byte for byte, with exactly the escapes the writer promises", arguments: [
        ("", #""""#), ("plain", #""plain""#), ("é 画像 🙂", "\"é 画像 🙂\""),
        ("a\"b\\c", #""a\"b\\c""#), ("\"", #""\"""#), ("x\n", #""x\n""#), ("\r\t", #""\r\t""#),
        ("<a>&", #""\u003ca\u003e\u0026""#), ("\u{1}\u{1f}\u{7f} é", #""\u0001\u001f\u007f é""#),
        ("head \u{0} mid \u{0} tail", #""head \u0000 mid \u0000 tail""#),
    ])
    func quoting(input: String, expected: String) throws {
        var w = JSONWriter()
        w.string(input)
        #expect(w.output == expected)
        #expect(try JSONParser.parse(w.output, context: "t") == .string(input))
    }

    @Test("ISO-8601 formatting", arguments: [
        (0.0, "1970-01-01T00:00:00.000Z"), (1_705_314_600.5, "2024-01-15T10:30:00.500Z"),
        (951_782_400, "2000-02-29T00:00:00.000Z"), (-1, "1969-12-31T23:59:59.000Z"),
    ])
    func iso(epoch: Double, expected: String) {
        #expect(ISO8601.format(epoch) == expected)
        var w = JSONWriter()
        w.beginObject()
        w.key("a")
        w.timestamp(epoch)
        w.key("b")
        w.timestamp(nil)
        w.key("c")
        w.timestamp(epoch)
        w.endObject()
        #expect(w.output == #"{"a":"\#(expected)","b":null,"c":"\#(expected)"}"#)
    }
}

@Suite("Task table")
struct TaskTableTests {
    @Test("insert, find and remove many keys keeps every probe chain intact")
    func map() {
        var map = TaskMap()
        var records: [String: TaskRecord] = [:]
        for i in 0..<5000 {
            let id = "task-\(i)"
            let key = TaskKey(owning: id)
            let r = TaskRecord(id: id, key: key, templateId: "x", category: nil, quality: nil, batchId: nil,
                               resourceConfig: nil, metadata: nil, stages: CategoryDefaults.stages(for: nil),
                               timestamp: 0)
            map[key] = r
            records[id] = r
        }
        #expect(map.count == 5000)
        for i in stride(from: 0, to: 5000, by: 2) { map[TaskKey(owning: "task-\(i)")] = nil }
        #expect(map.count == 2500)
        for i in 0..<5000 {
            let found = map[TaskKey(owning: "task-\(i)")]
            if i % 2 == 0 { #expect(found == nil) } else { #expect(found === records["task-\(i)"]) }
        }
        let bytes = Array("task-7".utf8)
        bytes.withUnsafeBytes { buf in
            #expect(map[TaskKey(borrowing: buf)] === records["task-7"])
        }
    }

    @Test("a record replaced under its id is found by the new record's key after the old one is gone")
    func replace() {
        func record(_ id: String) -> TaskRecord {
            TaskRecord(id: id, key: TaskKey(owning: id), templateId: "x", category: nil, quality: nil, batchId: nil,
                       resourceConfig: nil, metadata: nil, stages: CategoryDefaults.stages(for: nil), timestamp: 0)
        }
        var map = TaskMap()
        var current: [TaskRecord] = []
        for i in 0..<200 {
            let r = record("task-\(i)")
            map[r.key] = r
            current.append(r)
        }
        // Each replacement drops the last reference to the old record and so frees its key's bytes; the map
        // must compare against the new record's bytes from then on (ASan: `swift test --sanitize=address`).
        for round in 0..<3 {
            for i in 0..<200 {
                let r = record("task-\(i)")
                map[TaskKey(owning: "task-\(i)")] = r
                current[i] = r
            }
            // Take the freed blocks back and scribble on them, so stale bytes cannot still compare equal.
            let scribbles = (0..<400).map { _ in UnsafeMutableRawBufferPointer.allocate(byteCount: 9, alignment: 1) }
            for p in scribbles { p.initializeMemory(as: UInt8.self, repeating: UInt8(0xA0 + round)) }
            defer { for p in scribbles { p.deallocate() } }
            #expect(map.count == 200)
            for i in 0..<200 { #expect(map[TaskKey(owning: "task-\(i)")] === current[i]) }
        }
    }
}
