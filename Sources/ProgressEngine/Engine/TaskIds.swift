import Glibc

/// Task and batch ids: what the engine accepts.
extension EngineCore {
    static func isValidId(_ id: String) -> Bool {
        (try? validateId(id)) != nil
    }

    /// Task and batch ids: 1-256 printable characters (SPEC §14): no control characters, and none of the invisible
    /// or unassigned ones an id could hide in a dashboard or a log (format characters such as bidi overrides,
    /// zero-width spaces and BOMs, line and paragraph separators, private-use and unassigned code points). The
    /// zero-width joiner and non-joiner stay allowed: emoji sequences and some scripts need them.
    static func validateId(_ id: String, what: String = "task id") throws {
        var count = 0
        for scalar in id.unicodeScalars {
            count += 1
            let kind: String?
            if scalar.value < 0x20 || (0x7f...0x9f).contains(scalar.value) {
                kind = "control character"
            } else if scalar.value < 0x80 || scalar.value == 0x200C || scalar.value == 0x200D {
                kind = nil
            } else {
                switch scalar.properties.generalCategory {
                case .format: kind = "invisible format character"
                case .lineSeparator, .paragraphSeparator: kind = "line or paragraph separator"
                case .privateUse: kind = "private-use character"
                case .unassigned: kind = "unassigned code point"
                default: kind = nil
                }
            }
            if let kind {
                let hex = String(scalar.value, radix: 16, uppercase: true)
                throw EngineError.invalidArgument("\(what) contains \(kind) U+\(String(repeating: "0", count: max(0, 4 - hex.count)))\(hex); "
                    + "ids are 1-256 printable characters")
            }
        }
        guard count >= 1 else { throw EngineError.invalidArgument("\(what) is empty; ids are 1-256 printable characters") }
        guard count <= 256 else {
            throw EngineError.invalidArgument("\(what) is \(count) characters long; ids are 1-256 printable characters")
        }
    }

    /// An id a new task may take: one the REST routes can address. HTTP servers (libwebsockets included) decode
    /// `%2F` and resolve `.` and `..` segments and empty ones before the route sees the path, so an id with such a
    /// segment, or ending in a route's word, would be read as another task's path (a cancel of `jobs/../b` would
    /// reach `b`); and `"*"` means every task in a subscription. Ids with plain `/`-separated names stay allowed.
    static func validateNewId(_ id: String) throws {
        try validateId(id)
        guard id != "*" else {
            throw EngineError.invalidArgument("task id \"*\" is taken: it means every task in a subscription")
        }
        guard id.contains("/") || id == "." || id == ".." else { return }
        let segments = id.split(separator: "/", omittingEmptySubsequences: false)
        if segments.contains(where: { $0.isEmpty || $0 == "." || $0 == ".." }) {
            throw EngineError.invalidArgument("task id \(JSONValue.string(id).serialized()) has an empty, \".\" or "
                + "\"..\" segment between its slashes, which an HTTP path cannot carry (REST would reach another "
                + "task); name it without")
        }
        if let suffix = Routes.taskSuffixes.first(where: id.hasSuffix) {
            throw EngineError.invalidArgument("task id \(JSONValue.string(id).serialized()) ends in \"\(suffix)\", "
                + "which REST would read as that route of another task; name it otherwise")
        }
    }
}
