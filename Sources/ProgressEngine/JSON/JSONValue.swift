/// A parsed JSON document. The engine parses only small documents from outside (configuration, runner
/// events, stage lists, completion records), so a plain enum tree is enough; objects keep their key order.
enum JSONValue: Equatable, Sendable {
    case null
    case bool(Bool)
    case number(Double)
    case string(String)
    case array([JSONValue])
    case object([(String, JSONValue)])

    static func == (lhs: JSONValue, rhs: JSONValue) -> Bool {
        switch (lhs, rhs) {
        case (.null, .null): return true
        case let (.bool(a), .bool(b)): return a == b
        case let (.number(a), .number(b)): return a == b
        case let (.string(a), .string(b)): return a == b
        case let (.array(a), .array(b)): return a == b
        case let (.object(a), .object(b)):
            return a.count == b.count && zip(a, b).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 }
        default: return false
        }
    }

    /// The value of `key` in an object (the last one if the key repeats), nil otherwise.
    subscript(key: String) -> JSONValue? {
        guard case let .object(members) = self else { return nil }
        return members.last(where: { $0.0 == key })?.1
    }

    var isNull: Bool { if case .null = self { return true } else { return false } }

    /// A short name of the value's type, for error messages.
    var typeName: String {
        switch self {
        case .null: return "null"
        case .bool: return "a boolean"
        case .number: return "a number"
        case .string: return "a string"
        case .array: return "an array"
        case .object: return "an object"
        }
    }

    /// Serialises the value as compact JSON.
    func serialized() -> String {
        var writer = JSONWriter()
        writer.value(self)
        return writer.output
    }
}

/// Typed access to the members of a JSON object, with errors that name the offending key.
struct JSONObjectReader {
    let members: [(String, JSONValue)]
    let context: String

    /// - Throws: `EngineError.json` if `value` is not an object.
    init(_ value: JSONValue, context: String) throws {
        guard case let .object(members) = value else {
            throw EngineError.json("\(context) must be a JSON object, got \(value.typeName)")
        }
        self.members = members
        self.context = context
    }

    /// Throws if any key is not in `allowed` (naming the known key nearest to it, when one is a likely typo) or
    /// appears twice (which one was meant is a guess), so mistakes are caught instead of ignored.
    func rejectUnknownKeys(allowed: Set<String>, error: (String) -> EngineError) throws {
        for (i, (key, _)) in members.enumerated() {
            guard allowed.contains(key) else {
                let known = allowed.sorted().joined(separator: ", ")
                let guess = JSONObjectReader.nearest(to: key, in: allowed).map { " (did you mean \"\($0)\"?)" } ?? ""
                throw error("unknown key \"\(key)\" in \(context)\(guess); known keys: \(known)")
            }
            // A few keys each (a runner event's on every call): a scan, no set to allocate.
            guard !members[..<i].contains(where: { $0.0 == key }) else {
                throw error("key \"\(key)\" appears twice in \(context); keep one")
            }
        }
    }

    /// The key of `allowed` a typo of `key` most likely meant: the fewest single-character edits (Levenshtein, of
    /// the lowercased key), at most a third of the known key's length; nil when none is that close.
    static func nearest(to key: String, in allowed: Set<String>) -> String? {
        let typed = Array(key.lowercased().utf8)
        var best: (key: String, edits: Int)?
        for candidate in allowed.sorted() {
            let edits = editDistance(typed, Array(candidate.utf8))
            if edits <= max(1, candidate.utf8.count / 3), edits < best?.edits ?? .max { best = (candidate, edits) }
        }
        return best?.key
    }

    private static func editDistance(_ a: [UInt8], _ b: [UInt8]) -> Int {
        var row = Array(0...b.count)
        for i in a.indices {
            var diagonal = row[0]
            row[0] = i + 1
            for j in b.indices {
                let above = row[j + 1]
                row[j + 1] = Swift.min(above + 1, row[j] + 1, diagonal + (a[i] == b[j] ? 0 : 1))
                diagonal = above
            }
        }
        return row[b.count]
    }

    func value(_ key: String) -> JSONValue? {
        guard let v = members.last(where: { $0.0 == key })?.1, !v.isNull else { return nil }
        return v
    }

    func string(_ key: String) throws -> String? {
        guard let v = value(key) else { return nil }
        guard case let .string(s) = v else { throw typeError(key, "a string", v) }
        return s
    }

    func number(_ key: String) throws -> Double? {
        guard let v = value(key) else { return nil }
        guard case let .number(n) = v else { throw typeError(key, "a number", v) }
        return n
    }

    /// An integer-valued number (no fraction), within Int64.
    func integer(_ key: String) throws -> Int64? {
        guard let n = try number(key) else { return nil }
        guard n.rounded() == n, abs(n) < 9.0e15 else {
            throw EngineError.json("\"\(key)\" in \(context) must be an integer, got \(n)")
        }
        return Int64(n)
    }

    func bool(_ key: String) throws -> Bool? {
        guard let v = value(key) else { return nil }
        guard case let .bool(b) = v else { throw typeError(key, "a boolean", v) }
        return b
    }

    func object(_ key: String) throws -> JSONValue? {
        guard let v = value(key) else { return nil }
        guard case .object = v else { throw typeError(key, "an object", v) }
        return v
    }

    func array(_ key: String) throws -> [JSONValue]? {
        guard let v = value(key) else { return nil }
        guard case let .array(a) = v else { throw typeError(key, "an array", v) }
        return a
    }

    private func typeError(_ key: String, _ expected: String, _ got: JSONValue) -> EngineError {
        EngineError.json("\"\(key)\" in \(context) must be \(expected), got \(got.typeName)")
    }
}
