import Testing
@testable import ProgressEngine

/// RFC 7386 MergePatch(target, patch), as a client applies it; objects compare in key order only through
/// `sameDocument`, since a merge appends new keys where a full document has them in place.
private func apply(_ patch: JSONValue, to target: JSONValue) -> JSONValue {
    guard case let .object(members) = patch else { return patch }
    var out: [(String, JSONValue)] = []
    if case let .object(existing) = target { out = existing }
    for (key, value) in members {
        let index = out.firstIndex { $0.0 == key }
        if value.isNull {
            if let index { out.remove(at: index) }
        } else if let index {
            out[index].1 = apply(value, to: out[index].1)
        } else {
            out.append((key, apply(value, to: .null)))
        }
    }
    return .object(out)
}

/// Equal as JSON documents (object members in any order), nulls included.
private func sameDocument(_ a: JSONValue, _ b: JSONValue) -> Bool {
    switch (a, b) {
    case let (.object(x), .object(y)):
        guard x.count == y.count else { return false }
        return x.allSatisfy { member in y.contains { $0.0 == member.0 && sameDocument($0.1, member.1) } }
    case let (.array(x), .array(y)):
        return x.count == y.count && zip(x, y).allSatisfy { sameDocument($0, $1) }
    default:
        return a == b
    }
}

private func bytes(_ text: String) -> [UInt8] { Array(text.utf8) }

private func diff(_ old: String, _ new: String) -> String? {
    MergePatch.diff(from: bytes(old), to: bytes(new)).map { String(decoding: $0, as: UTF8.self) }
}

@Suite("Merge patches (delta updates)")
struct MergePatchTests {
    @Test("changed members only, nested objects recursively, arrays and scalars whole")
    func changes() {
        #expect(diff(#"{"a":1,"b":"x","c":{"d":1,"e":[1,2]}}"#, #"{"a":1,"b":"y","c":{"d":1,"e":[1,null]}}"#)
            == #"{"b":"y","c":{"e":[1,null]}}"#)
        #expect(diff(#"{"a":1,"s":{"0":{"p":0.5,"m":"x"}}}"#, #"{"a":1,"s":{"0":{"p":0.5,"m":"x"}}}"#) == "{}")
        #expect(diff(#"{"a":null}"#, #"{"a":{"b":1}}"#) == #"{"a":{"b":1}}"#)
        #expect(diff(#"{"a":1}"#, #"{"a":1,"b":{"c":2}}"#) == #"{"b":{"c":2}}"#)
        #expect(diff(#"{"a":{"b":1}}"#, #"{"a":7}"#) == #"{"a":7}"#)
        // Strings with quotes, escapes and brackets are values like any other.
        #expect(diff(#"{"m":"a\"}{[","n":1}"#, #"{"m":"a\\\"]","n":1}"#) == #"{"m":"a\\\"]"}"#)
    }

    @Test("a change that needs a null is no merge patch: the full state goes instead")
    func nulls() {
        #expect(diff(#"{"eta":"2026-01-01T00:00:00.000Z"}"#, #"{"eta":null}"#) == nil)
        #expect(diff(#"{"a":{"b":1}}"#, #"{"a":{"b":null}}"#) == nil)
        #expect(diff(#"{"a":1,"b":2}"#, #"{"a":1}"#) == nil)
        #expect(diff(#"{"a":1}"#, #"{"a":{"b":null}}"#) == nil)
        #expect(diff(#"{"a":1}"#, #"{"a":1,"b":null}"#) == nil)
        #expect(diff(#"{"a":1}"#, #"{"a":1,"b":{"c":{"d":null}}}"#) == nil)
        // Unchanged nulls and nulls in arrays are fine.
        #expect(diff(#"{"a":null,"b":1}"#, #"{"a":null,"b":2}"#) == #"{"b":2}"#)
    }

    @Test("malformed or non-object documents give no patch", arguments: [
        ("", "{}"), ("{}", ""), ("[1]", "[2]"), (#"{"a":1"#, #"{"a":2}"#), (#"{"a":1}"#, #"{"a":"x}"#),
        (#"{"a":1}x"#, #"{"a":2}"#), (#"{"a" 1}"#, #"{"a":2}"#), ("1", "2"),
    ])
    func malformed(old: String, new: String) {
        #expect(diff(old, new) == nil)
    }

    @Test("strings are read eight bytes at a time: a quote or backslash at any offset ends or escapes them",
          arguments: ["x", "é"])
    func stringOffsets(filler: String) {
        // "é" is two bytes of 0x80 and over: the quote / backslash test must not fire on high bytes.
        for length in 0..<20 {
            for escape in 0...length {
                var chars = Array(repeating: filler, count: length)
                if escape < length { chars[escape] = #"\""# }
                let text = chars.joined()
                #expect(diff(#"{"s":"\#(text)","n":1}"#, #"{"s":"\#(text)","n":2}"#) == #"{"n":2}"#)
                #expect(diff(#"{"n":1,"s":"\#(text)"}"#, #"{"n":1,"s":"\#(text)y"}"#) == #"{"s":"\#(text)y"}"#)
                // Cut short inside the string: no document, no patch.
                #expect(diff(#"{"n":1}"#, #"{"n":1,"s":"\#(text)"#) == nil)
            }
        }
    }

    @Test("documents nested deeper than the outline reads give no patch")
    func depth() {
        func nested(_ depth: Int, _ leaf: Int) -> String {
            String(repeating: #"{"a":"#, count: depth) + "\(leaf)" + String(repeating: "}", count: depth)
        }
        let limit = MergePatch.Outline.maxDepth
        // The root is depth 0; "o"'s value holds `n` nested objects, the innermost at depth n.
        #expect(diff("{\"o\":" + nested(limit - 1, 1) + "}", "{\"o\":" + nested(limit - 1, 2) + "}") != nil)
        #expect(diff("{\"o\":" + nested(limit, 1) + "}", "{\"o\":" + nested(limit, 2) + "}") == nil)
    }

    @Test("random documents: applying the patch gives the new document exactly")
    func randomDocuments() throws {
        var rng = SplitMix(seed: 0x5EED)
        var patched = 0
        for _ in 0..<2_000 {
            let old = randomObject(&rng, depth: 0)
            let new = mutate(old, &rng, depth: 0)
            let oldBytes = bytes(old.serialized())
            let newBytes = bytes(new.serialized())
            guard let patch = MergePatch.diff(from: oldBytes, to: newBytes) else { continue }
            patched += 1
            let p = try JSONParser.parse(String(decoding: patch, as: UTF8.self), context: "patch")
            let rebuilt = apply(p, to: try JSONParser.parse(String(decoding: oldBytes, as: UTF8.self), context: "old"))
            #expect(sameDocument(rebuilt, new), "\(old.serialized()) + \(p.serialized()) != \(new.serialized())")
        }
        #expect(patched > 500)
    }
}

/// A small deterministic generator (SplitMix64), so a failure replays.
private struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func below(_ n: Int) -> Int { Int(next() % UInt64(n)) }
}

private let keys = ["a", "b", "eta", "s\"q", "0", "1", "msg", "{", "null"]

private func randomScalar(_ rng: inout SplitMix) -> JSONValue {
    switch rng.below(6) {
    case 0: return .null
    case 1: return .bool(rng.below(2) == 0)
    case 2: return .number(Double(rng.below(1000)) / 8)
    case 3: return .string(["x", "y\"}", "[", "\\", "é"][rng.below(5)])
    case 4: return .array((0..<rng.below(3)).map { _ in randomScalar(&rng) })
    default: return .number(Double(rng.below(3)))
    }
}

private func randomObject(_ rng: inout SplitMix, depth: Int) -> JSONValue {
    var members: [(String, JSONValue)] = []
    for key in keys where rng.below(2) == 0 {
        members.append((key, depth < 3 && rng.below(4) == 0 ? randomObject(&rng, depth: depth + 1) : randomScalar(&rng)))
    }
    return .object(members)
}

/// Changes a few members (values, nested values, added or removed keys), keeping the rest and their order.
private func mutate(_ value: JSONValue, _ rng: inout SplitMix, depth: Int) -> JSONValue {
    guard case let .object(members) = value else { return value }
    var out: [(String, JSONValue)] = []
    for (key, v) in members {
        switch rng.below(10) {
        case 0 where depth > 0: continue
        case 1: out.append((key, randomScalar(&rng)))
        case 2, 3: out.append((key, mutate(v, &rng, depth: depth + 1)))
        case 4 where depth < 3: out.append((key, randomObject(&rng, depth: depth + 1)))
        default: out.append((key, v))
        }
    }
    for key in keys where rng.below(12) == 0 && !out.contains(where: { $0.0 == key }) {
        out.append((key, randomScalar(&rng)))
    }
    return .object(out)
}
