/// A runner event (the seed's `callback(event, data)`), parsed and validated before it touches any task, so a
/// bad one changes nothing.
enum RunnerEvent {
    case progress(step: Int64, total: Int64, message: String?, previewPath: String?)
    case log(LogLevel, String)
    case resources(ResourceUsage)
    case complete
    case error(String?)
    /// An event named after a stage, or an unknown event when the task has no such stage. Its data is checked
    /// (`stageArguments`) only once it is known to name a stage: an unknown event's data is ignored with it.
    case stage(name: String, data: JSONValue)

    /// Parses `data_json` of event `name`.
    /// - Returns: the event and its explicit timestamp, if any.
    /// - Throws: `.invalidArgument` for an empty name, `.json` for malformed data, unknown keys or wrong types,
    ///   `.range` for negative resource figures.
    static func parse(name: String, dataJSON: String?) throws -> (RunnerEvent, timestamp: Double?) {
        guard !name.isEmpty else { throw EngineError.invalidArgument("event name is empty") }
        let context = "data_json of event \"\(name)\""
        let data = try dataJSON.map { try JSONParser.parse($0, context: context) } ?? .object([])
        let reader = try JSONObjectReader(data, context: context)
        func allow(_ keys: Set<String>) throws {
            try reader.rejectUnknownKeys(allowed: keys.union(["timestamp"]), error: EngineError.json)
        }
        let event: RunnerEvent
        switch name {
        case "execution_progress":
            try allow(["step", "total_steps", "message", "preview_path"])
            guard let step = try reader.integer("step"), let total = try reader.integer("total_steps") else {
                throw EngineError.json("execution_progress needs integer \"step\" and \"total_steps\"")
            }
            event = .progress(step: step, total: total, message: try reader.string("message"),
                              previewPath: try reader.string("preview_path"))
        case "log":
            try allow(["level", "message"])
            guard let message = try reader.string("message") else { throw EngineError.json("log event needs a \"message\" string") }
            let levelName = try reader.string("level") ?? "info"
            guard let level = LogLevel(name: levelName) else {
                throw EngineError.json("log level \"\(levelName)\" is not one of debug, info, warning, error")
            }
            event = .log(level, message)
        case "resources":
            try allow(["cpu_percent", "memory_mb", "gpu_percent", "gpu_memory_mb"])
            let usage = ResourceUsage(cpuPercent: try reader.number("cpu_percent"), memoryMB: try reader.number("memory_mb"),
                                      gpuPercent: try reader.number("gpu_percent"),
                                      gpuMemoryMB: try reader.number("gpu_memory_mb"))
            for v in [usage.cpuPercent, usage.memoryMB, usage.gpuPercent, usage.gpuMemoryMB] {
                if let v, v < 0 { throw EngineError.range("resource figures must be >= 0, got \(v)") }
            }
            event = .resources(usage)
        case "execution_complete":
            try allow([])
            event = .complete
        case "execution_error":
            try allow(["error"])
            event = .error(try reader.string("error"))
        default:
            event = .stage(name: name, data: data)
        }
        return (event, try reader.number("timestamp"))
    }

    /// The data of an event that names one of the task's stages: {progress?, message?, variant?, timestamp?}.
    /// - Throws: `.json` for other keys or wrong types, `.invalidArgument` for an empty or over-long variant.
    static func stageArguments(name: String, data: JSONValue) throws
        -> (progress: Double?, message: String?, variant: String?) {
        let reader = try JSONObjectReader(data, context: "data_json of event \"\(name)\"")
        try reader.rejectUnknownKeys(allowed: ["progress", "message", "variant", "timestamp"], error: EngineError.json)
        let variant = try reader.string("variant")
        if let variant, variant.isEmpty || variant.utf8.count > 64 {
            throw EngineError.invalidArgument("\"variant\" of event \"\(name)\" must be 1-64 bytes")
        }
        return (try reader.number("progress"), try reader.string("message"), variant)
    }
}
