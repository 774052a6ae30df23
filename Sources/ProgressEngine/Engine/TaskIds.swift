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
}
