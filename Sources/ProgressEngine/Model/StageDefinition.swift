/// One stage of a template: what the runner does, and how much of the whole task it weighs.
struct StageDefinition: Equatable, Sendable {
    let name: String
    let description: String
    /// Normalised: the weights of a template sum to 1.
    let weight: Double

    /// Validates and normalises a stage list.
    /// - Parameter stages: (name, description, raw weight) in order.
    /// - Returns: the stages with weights summing to 1.
    /// - Throws: `EngineError.invalidArgument` for an empty list, an empty or repeated name, or weights that
    ///   are negative, not finite, or all zero.
    static func normalised(_ stages: [(String, String, Double)], context: String) throws -> [StageDefinition] {
        guard !stages.isEmpty else {
            throw EngineError.invalidArgument("\(context): the stage list is empty; give at least one stage")
        }
        guard stages.count <= 256 else {
            throw EngineError.limit("\(context): \(stages.count) stages; at most 256 are allowed")
        }
        var seen = Set<String>()
        var sum = 0.0
        for (index, (name, _, weight)) in stages.enumerated() {
            guard !name.isEmpty else { throw EngineError.invalidArgument("\(context): stage \(index) has an empty name") }
            guard seen.insert(name).inserted else {
                throw EngineError.invalidArgument("\(context): stage name \"\(name)\" appears twice; names must be unique")
            }
            guard weight.isFinite, weight >= 0 else {
                throw EngineError.invalidArgument(
                    "\(context): stage \"\(name)\" has weight \(weight); weights must be finite and >= 0")
            }
            sum += weight
        }
        guard sum > 0, sum.isFinite else {
            throw EngineError.invalidArgument("\(context): the stage weights sum to \(sum); it must be positive")
        }
        return stages.map { StageDefinition(name: $0.0, description: $0.1, weight: $0.2 / sum) }
    }

    /// Parses `[{"name", "description"?, "weight"}]` and normalises it.
    static func parseList(_ json: JSONValue, context: String) throws -> [StageDefinition] {
        guard case let .array(elements) = json else {
            throw EngineError.json("\(context) must be a JSON array of stages, got \(json.typeName)")
        }
        var raw: [(String, String, Double)] = []
        for (index, element) in elements.enumerated() {
            let reader = try JSONObjectReader(element, context: "\(context)[\(index)]")
            try reader.rejectUnknownKeys(allowed: ["name", "description", "weight"], error: EngineError.json)
            guard let name = try reader.string("name") else {
                throw EngineError.json("\(context)[\(index)] needs a \"name\" string")
            }
            guard let weight = try reader.number("weight") else {
                throw EngineError.json("\(context)[\(index)] (\"\(name)\") needs a \"weight\" number")
            }
            raw.append((name, try reader.string("description") ?? "", weight))
        }
        return try normalised(raw, context: context)
    }

    /// The stages as `parseList` reads them: `[{"name", "description", "weight"}]`.
    static func json(_ stages: [StageDefinition]) -> String {
        var w = JSONWriter()
        w.beginArray()
        for stage in stages {
            w.beginObject()
            w.key("name"); w.string(stage.name)
            w.key("description"); w.string(stage.description)
            w.key("weight"); w.number(stage.weight)
            w.endObject()
        }
        w.endArray()
        return w.output
    }
}

/// The stages a task gets when its template registered none: per category, as in the seed, else generic.
enum CategoryDefaults {
    static func stages(for category: String?) -> [StageDefinition] {
        let raw: [(String, String, Double)]
        switch category {
        case "image_generation":
            raw = [("queue", "Waiting in queue", 0.05), ("model_loading", "Loading models", 0.15),
                   ("generation", "Generating image", 0.70), ("post_processing", "Post-processing", 0.10)]
        case "video_generation":
            raw = [("queue", "Waiting in queue", 0.02), ("model_loading", "Loading models", 0.08),
                   ("frame_generation", "Generating frames", 0.80), ("video_encoding", "Encoding video", 0.10)]
        case "audio_generation":
            raw = [("queue", "Waiting in queue", 0.05), ("model_loading", "Loading models", 0.15),
                   ("generation", "Generating audio", 0.70), ("post_processing", "Post-processing", 0.10)]
        case "text_generation":
            raw = [("queue", "Waiting in queue", 0.05), ("model_loading", "Loading models", 0.15),
                   ("generation", "Generating text", 0.75), ("post_processing", "Post-processing", 0.05)]
        default:
            raw = [("queue", "Waiting in queue", 0.05), ("processing", "Processing", 0.85),
                   ("finalizing", "Finalizing", 0.10)]
        }
        // The tables above sum to 1 and have unique names, so normalisation cannot fail.
        return raw.map { StageDefinition(name: $0.0, description: $0.1, weight: $0.2) }
    }
}
