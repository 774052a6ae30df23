/// A finished run of a template: what the ETA predictor learns from (the seed's `record_completion`).
struct CompletionRecord: Sendable {
    var taskId: String?
    var templateId: String
    /// The template's category, for matching tasks of a template that has no history yet.
    var category: String?
    var quality: String?
    /// (stage index, seconds), ascending by index.
    var stageDurations: [(Int, Double)]
    /// How stages that reported progress spent their time, by stage index (the engine's own records).
    var profiles: [Int: StageProfile]
    var totalDuration: Double
    var resourceConfig: JSONValue?
    var timestamp: Double
    /// The job's size as its runner gave it (`Workload`), nil when it gave none.
    var workload: Workload? = nil
    /// The runner's variant of each stage that had one (`StageState.variant`), by stage index.
    var stageVariants: [Int: String] = [:]
    /// Made from another engine's task this engine mirrors (without what only the task's own engine measured,
    /// such as stage profiles): that engine's own record is the one to write back after a Redis restart lost it.
    /// Not part of the JSON.
    var fromMirror = false

    static let keys: Set<String> = ["task_id", "template_id", "template_category", "quality", "stage_durations",
                                    "stage_profiles", "total_duration", "resource_config", "timestamp", "workload",
                                    "stage_variants"]

    /// Parses `{"task_id"?, "template_id", "template_category"?, "quality"?, "stage_durations": {"0": s, ...},
    /// "stage_profiles"?: {"2": {...}}, "total_duration", "resource_config"?, "timestamp"?, "workload"?: {"steps": 30,
    /// ...}, "stage_variants"?: {"1": "cold"}}`.
    /// - Parameters:
    ///   - text: the record as JSON.
    ///   - now: the time to record when the record has no "timestamp".
    /// - Returns: the record.
    /// - Throws: `EngineError.json` for malformed JSON or a wrong shape, `.range` for negative durations or a bad
    ///   timestamp.
    static func parse(_ text: String, now: Double) throws -> CompletionRecord {
        let reader = try JSONObjectReader(try JSONParser.parse(text, context: "record_json"), context: "record_json")
        try reader.rejectUnknownKeys(allowed: keys, error: EngineError.json)
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
                let index = try stageIndex(key, in: "stage_durations")
                guard case let .number(seconds) = value, seconds >= 0 else {
                    throw EngineError.json("stage_durations[\"\(key)\"] must be a number >= 0")
                }
                durations.append((index, seconds))
            }
        }
        durations.sort { $0.0 < $1.0 }
        var profiles: [Int: StageProfile] = [:]
        if let object = try reader.object("stage_profiles"), case let .object(members) = object {
            for (key, value) in members {
                profiles[try stageIndex(key, in: "stage_profiles")] =
                    try StageProfile.parse(value, context: "stage_profiles[\"\(key)\"]")
            }
        }
        var variants: [Int: String] = [:]
        if let object = try reader.object("stage_variants"), case let .object(members) = object {
            for (key, value) in members {
                guard case let .string(variant) = value, !variant.isEmpty, variant.utf8.count <= 64 else {
                    throw EngineError.json("stage_variants[\"\(key)\"] must be a string of 1-64 bytes")
                }
                variants[try stageIndex(key, in: "stage_variants")] = variant
            }
        }
        let timestamp = try reader.number("timestamp") ?? now
        guard timestamp.isFinite, timestamp >= 0 else { throw EngineError.range("timestamp \(timestamp) is not valid") }
        return CompletionRecord(taskId: try reader.string("task_id"), templateId: templateId,
                                category: try reader.string("template_category"),
                                quality: try reader.string("quality"), stageDurations: durations,
                                profiles: profiles, totalDuration: total,
                                resourceConfig: try reader.object("resource_config"), timestamp: timestamp,
                                workload: try reader.object("workload").flatMap {
                                    try Workload.parse($0, context: "workload")
                                }, stageVariants: variants)
    }

    private static func stageIndex(_ key: String, in member: String) throws -> Int {
        guard let index = Int(key), index >= 0, index < 256 else {
            throw EngineError.json("\(member) key \"\(key)\" must be a stage index 0...255")
        }
        return index
    }

    /// Writes the record in the shape `parse` reads.
    func write(to w: inout JSONWriter) {
        w.beginObject()
        w.key("task_id"); w.string(taskId)
        w.key("template_id"); w.string(templateId)
        w.key("template_category"); w.string(category)
        w.key("quality"); w.string(quality)
        w.key("stage_durations"); w.beginObject()
        for (index, seconds) in stageDurations {
            w.key(String(index)); w.number(seconds)
        }
        w.endObject()
        w.key("stage_profiles"); w.beginObject()
        for index in profiles.keys.sorted() {
            w.key(String(index)); profiles[index]?.write(to: &w)
        }
        w.endObject()
        w.key("total_duration"); w.number(totalDuration)
        w.key("resource_config"); w.value(resourceConfig ?? .null)
        w.key("timestamp"); w.number(timestamp)
        if let workload {
            w.key("workload"); workload.write(to: &w)
        }
        if !stageVariants.isEmpty {
            w.key("stage_variants"); w.beginObject()
            for index in stageVariants.keys.sorted() {
                w.key(String(index)); w.string(stageVariants[index])
            }
            w.endObject()
        }
        w.endObject()
    }
}

extension CompletionRecord {
    /// The record of `task`, completed at `end` (this engine's own task, or another engine's that it mirrors).
    init(completed task: TaskRecord, at end: Double) {
        self.init(taskId: task.id, templateId: task.templateId, category: task.category, quality: task.quality,
                  stageDurations: task.stageDurations, profiles: task.profiles, totalDuration: end - task.createdAt,
                  resourceConfig: task.resourceConfig, timestamp: end, workload: Workload(metadata: task.metadata),
                  stageVariants: Dictionary(uniqueKeysWithValues: task.stages.indices.compactMap { index in
                      task.stages[index].variant.map { (index, $0) }
                  }))
    }
}
