import Glibc

/// Stage templates and completion records (the ETA's history), kept here and in Redis.
extension EngineCore {
    func registerTemplate(id: String, stagesJSON: String) throws {
        guard !id.isEmpty else { throw EngineError.invalidArgument("template_id is empty") }
        let stages = try StageDefinition.parseList(try JSONParser.parse(stagesJSON, context: "stages_json"),
                                                   context: "stages_json of template \"\(id)\"")
        templates.withLock { $0[IdKey(id)] = stages }
        store.persistTemplate(id: id, stagesJSON: stagesJSON)
    }

    /// Templates registered through another engine of the fleet (Redis), unless registered here already.
    func loadStoredTemplates() {
        for (id, json) in store.templates() {
            guard let value = try? JSONParser.parse(json, context: "stored template"),
                  let stages = try? StageDefinition.parseList(value, context: "stored template \"\(id)\"") else { continue }
            templates.withLock { if $0[IdKey(id)] == nil { $0[IdKey(id)] = stages } }
        }
    }

    /// The fleet's completion records (Redis): a restarted engine, or a listener of the fleet, predicts ETAs from
    /// the history at once instead of starting from none. Records that do not parse are skipped.
    func loadStoredCompletions() {
        for text in store.completionRecords() {
            if let record = try? CompletionRecord.parse(text, now: 0) { completions.add(record) }
        }
    }

    func recordCompletion(json: String) throws {
        let record = try CompletionRecord.parse(json, now: clock.now())
        completions.add(record)
        store.persistCompletion(record)
    }
}
