

/// A finished run of a template: what the ETA predictor learns from (the seed's `record_completion`).
struct CompletionRecord: Sendable {
    var taskId: String?
    var templateId: String
    var quality: String?
    /// (stage index, seconds), ascending by index.
    var stageDurations: [(Int, Double)]
    var totalDuration: Double
    var resourceConfig: JSONValue?
    var timestamp: Double

    /// Parses `{"task_id"?, "template_id", "quality"?, "stage_durations": {"0": s, ...}, "total_duration",
    /// "resource_config"?, "timestamp"?}`.
    static func parse(_ text: String, now: Double) throws -> CompletionRecord {
        let reader = try JSONObjectReader(try JSONParser.parse(text, context: "record_json"), context: "record_json")
        try reader.rejectUnknownKeys(allowed: ["task_id", "template_id", "quality", "stage_durations", "total_duration",
                                               "resource_config", "timestamp"], error: EngineError.json)
        guard let templateId = try reader.string("template_id"), !templateId.isEmpty else {
            throw EngineError.json("record_json needs a non-empty \"template_id\" string")
        }
        guard let total = try reader.number("total_duration") else {
            throw EngineError.json("record_json needs a \"total_duration\" number (seconds)")
        }
        guard total >= 0 else { throw EngineError.range("total_duration must be >= 0 seconds, got \(total)") }
        var durations: [(Int, Double)] = []
        if let object = try reader.object("stage_durations"), case let .object(members) = object {
            for (key, value) in members {
                guard let index = Int(key), index >= 0, index < 256 else {
                    throw EngineError.json("stage_durations key \"\(key)\" must be a stage index 0...255")
                }
                guard case let .number(seconds) = value, seconds >= 0 else {
                    throw EngineError.json("stage_durations[\"\(key)\"] must be a number >= 0")
                }
                durations.append((index, seconds))
            }
        }
        durations.sort { $0.0 < $1.0 }
        let timestamp = try reader.number("timestamp") ?? now
        guard timestamp.isFinite, timestamp >= 0 else { throw EngineError.range("timestamp \(timestamp) is not valid") }
        return CompletionRecord(taskId: try reader.string("task_id"), templateId: templateId,
                                quality: try reader.string("quality"), stageDurations: durations,
                                totalDuration: total, resourceConfig: try reader.object("resource_config"),
                                timestamp: timestamp)
    }

    func write(to w: inout JSONWriter) {
        w.beginObject()
        w.key("task_id"); w.string(taskId)
        w.key("template_id"); w.string(templateId)
        w.key("quality"); w.string(quality)
        w.key("stage_durations"); w.beginObject()
        for (index, seconds) in stageDurations {
            w.key(String(index)); w.number(seconds)
        }
        w.endObject()
        w.key("total_duration"); w.number(totalDuration)
        w.key("resource_config"); w.value(resourceConfig ?? .null)
        w.key("timestamp"); w.number(timestamp)
        w.endObject()
    }
}

/// Completion records per template and quality, the newest `capacity` of each kept.
final class CompletionHistory: Sendable {
    static let capacity = 1000
    private struct Key: Hashable {
        let template: String
        let quality: String?
    }

    private let records = Locked<[Key: Ring<CompletionRecord>]>([:])

    func add(_ record: CompletionRecord) {
        let key = Key(template: record.templateId, quality: record.quality)
        records.withLock { all in
            all[key, default: Ring(capacity: CompletionHistory.capacity)].append(record)
        }
    }

    /// Records of a template (of one quality, or of all when `quality` is nil), oldest first.
    func records(template: String, quality: String?) -> [CompletionRecord] {
        records.withLock { all in
            var out: [CompletionRecord] = []
            for (key, ring) in all where key.template == template && (quality == nil || key.quality == quality) {
                ring.forEach { out.append($0) }
            }
            return out.sorted { $0.timestamp < $1.timestamp }
        }
    }
}
