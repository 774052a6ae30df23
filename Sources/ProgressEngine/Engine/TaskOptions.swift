/// Options of a task's creation (`options_json`).
struct TaskOptions: Sendable {
    var quality: String?
    var batchId: String?
    var resourceConfig: JSONValue?
    var metadata: JSONValue?
    var resume = false
    /// A finished task under the id is replaced by the new one, as an expired one is.
    var reuse = false
    var timestamp: Double?

    static func parse(_ text: String?) throws -> TaskOptions {
        var options = TaskOptions()
        guard let text, !text.isEmpty else { return options }
        let reader = try JSONObjectReader(try JSONParser.parse(text, context: "options_json"), context: "options_json")
        try reader.rejectUnknownKeys(allowed: ["quality", "batch_id", "resource_config", "metadata", "resume", "reuse",
                                               "timestamp"], error: EngineError.json)
        options.quality = try reader.string("quality")
        options.batchId = try reader.string("batch_id")
        if let batch = options.batchId { try EngineCore.validateId(batch, what: "batch_id") }
        options.resourceConfig = try reader.object("resource_config")
        options.metadata = try reader.object("metadata")
        options.resume = try reader.bool("resume") ?? false
        options.reuse = try reader.bool("reuse") ?? false
        options.timestamp = try reader.number("timestamp")
        return options
    }
}
