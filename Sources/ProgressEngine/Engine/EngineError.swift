/// An error of the engine, mapped one-to-one onto a pinned `progress_status` code of the C header.
/// A struct around a private enum, so that kinds can be added without breaking anyone who switches on it.
struct EngineError: Error, CustomStringConvertible, Equatable {
    private enum Kind: Int32 {
        case invalidArgument = -1
        case notFound = -2
        case exists = -3
        case state = -4
        case range = -5
        case json = -6
        case config = -7
        case unsupported = -8
        case io = -9
        case limit = -10
        case `internal` = -11
    }

    private let kind: Kind
    /// What happened and what to do, for `progress_last_error()`.
    let message: String

    /// The `progress_status` value of the C header.
    var status: Int32 { kind.rawValue }
    var description: String { message }

    static func invalidArgument(_ m: String) -> EngineError { EngineError(kind: .invalidArgument, message: m) }
    static func notFound(_ m: String) -> EngineError { EngineError(kind: .notFound, message: m) }
    static func exists(_ m: String) -> EngineError { EngineError(kind: .exists, message: m) }
    static func state(_ m: String) -> EngineError { EngineError(kind: .state, message: m) }
    static func range(_ m: String) -> EngineError { EngineError(kind: .range, message: m) }
    static func json(_ m: String) -> EngineError { EngineError(kind: .json, message: m) }
    static func config(_ m: String) -> EngineError { EngineError(kind: .config, message: m) }
    static func unsupported(_ m: String) -> EngineError { EngineError(kind: .unsupported, message: m) }
    static func io(_ m: String) -> EngineError { EngineError(kind: .io, message: m) }
    static func limit(_ m: String) -> EngineError { EngineError(kind: .limit, message: m) }
    static func `internal`(_ m: String) -> EngineError { EngineError(kind: .internal, message: m) }

    /// The name of a status code as spelled in the header; static storage, never freed.
    static func statusName(_ status: Int32) -> StaticString {
        switch status {
        case 0: return "PROGRESS_OK"
        case -1: return "PROGRESS_E_INVALID_ARGUMENT"
        case -2: return "PROGRESS_E_NOT_FOUND"
        case -3: return "PROGRESS_E_EXISTS"
        case -4: return "PROGRESS_E_STATE"
        case -5: return "PROGRESS_E_RANGE"
        case -6: return "PROGRESS_E_JSON"
        case -7: return "PROGRESS_E_CONFIG"
        case -8: return "PROGRESS_E_UNSUPPORTED"
        case -9: return "PROGRESS_E_IO"
        case -10: return "PROGRESS_E_LIMIT"
        case -11: return "PROGRESS_E_INTERNAL"
        default: return "PROGRESS_E_UNKNOWN"
        }
    }
}
