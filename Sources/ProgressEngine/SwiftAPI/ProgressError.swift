/// An error of the engine, as a Swift host sees it: a code with the C header's pinned `progress_status` value,
/// and a message that says what happened and what to do.
///
/// A struct around a private enum, so that codes can be added without breaking a host that switches on them:
/// compare with the static members (`error.code == .notFound`).
public struct ProgressError: Error, Sendable, Equatable, CustomStringConvertible {
    /// What kind of error, one per `progress_status` code of include/progress.h.
    public struct Code: Sendable, Hashable, CustomStringConvertible {
        private enum Value: Int32, Sendable {
            case invalidArgument = -1, notFound = -2, exists = -3, state = -4, range = -5, json = -6, config = -7
            case unsupported = -8, io = -9, limit = -10, `internal` = -11
        }

        private let value: Value

        private init(_ value: Value) {
            self.value = value
        }

        init(status: Int32) {
            self.value = Value(rawValue: status) ?? .internal
        }

        /// A bad argument: an invalid task id, a stage index or level out of its range, a bad image.
        public static let invalidArgument = Code(.invalidArgument)
        /// No such task (or it expired after `retention_seconds`), batch or template.
        public static let notFound = Code(.notFound)
        /// A task with that id exists already.
        public static let exists = Code(.exists)
        /// Not allowed in the task's state (an update after it finished).
        public static let state = Code(.state)
        /// A number out of range (a step past the total, a negative or NaN value).
        public static let range = Code(.range)
        /// Malformed JSON in a JSON argument.
        public static let json = Code(.json)
        /// A bad configuration key or value.
        public static let config = Code(.config)
        /// Not supported by this build or configuration.
        public static let unsupported = Code(.unsupported)
        /// A system call, socket or file failed.
        public static let io = Code(.io)
        /// A configured limit was reached.
        public static let limit = Code(.limit)
        /// A bug in the engine; the message says where.
        public static let `internal` = Code(.internal)

        /// The pinned `progress_status` value of the C header.
        public var status: Int32 { value.rawValue }

        /// The C name, such as `PROGRESS_E_NOT_FOUND`.
        public var description: String { EngineError.statusName(value.rawValue).description }
    }

    /// What kind of error.
    public let code: Code
    /// What happened and what to do (the text `progress_last_error()` returns for the same error).
    public let message: String

    public var description: String { "\(code): \(message)" }

    init(_ error: EngineError) {
        code = Code(status: error.status)
        message = error.message
    }

    /// Whether this is a problem of the data a runner reported (a step out of range, an unknown, finished or
    /// expired task, a bad image) rather than of the program: the runner-facing calls do not throw these unless
    /// the engine was opened strict.
    var isRunnerData: Bool {
        code == .range || code == .state || code == .notFound || code == .invalidArgument
    }
}

extension ProgressError {
    /// Runs `body`, turning an engine error into a `ProgressError`.
    static func mapping<R>(_ body: () throws -> R) throws(ProgressError) -> R {
        do {
            return try body()
        } catch let error as EngineError {
            throw ProgressError(error)
        } catch {
            throw ProgressError(EngineError.internal("unexpected error: \(error)"))
        }
    }
}
