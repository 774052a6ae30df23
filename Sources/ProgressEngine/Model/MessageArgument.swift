import Glibc

/// A message argument as it arrives: absent, a caller's C string (copied only when it differs from the
/// current message, so the hot path does not allocate for a repeated message), or a Swift string.
enum MessageArgument {
    case none
    case cString(UnsafePointer<CChar>)
    case string(String)

    /// The message to store, or nil to keep `current`.
    /// - Throws: `EngineError.invalidArgument` for a C string that is not valid UTF-8.
    func resolve(current: String?) throws -> String? {
        switch self {
        case .none:
            return nil
        case let .string(s):
            return s == current ? nil : s
        case let .cString(p):
            if var current {
                let same = current.withUTF8 { buf in
                    strlen(p) == buf.count && (buf.isEmpty || memcmp(p, buf.baseAddress!, buf.count) == 0)
                }
                if same { return nil }
            }
            guard let s = String(validatingCString: p) else {
                throw EngineError.invalidArgument("message is not valid UTF-8")
            }
            return s
        }
    }
}
