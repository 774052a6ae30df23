import Glibc

/// Stage templates and completion records (the ETA's history), kept here and in Redis.
extension EngineCore {
    func registerTemplate(id: String, stagesJSON: String) throws {
        guard !id.isEmpty else { throw EngineError.invalidArgument("template_id is empty") }
        let stages = try StageDefinition.parseList(try JSONParser.parse(stagesJSON, context: "stages_json"),
                                                   context: "stages_json of template \"\(id)\"")
        templates.withLock { $0[IdKey(id)] = stages }
        // As this engine writes it (what a restore writes too), not the caller's text: every engine reads it back.
        store.persistTemplate(id: id, stagesJSON: StageDefinition.json(stages))
    }

    /// Templates registered through another engine of the fleet (Redis), unless registered here already. One
    /// this engine cannot read (written by another version) is skipped, and said so once per open.
    func loadStoredTemplates() {
        for (id, json) in store.templates() {
            do {
                let stages = try StageDefinition.parseList(try JSONParser.parse(json, context: "stored template"),
                                                           context: "stored template \"\(id)\"")
                templates.withLock { if $0[IdKey(id)] == nil { $0[IdKey(id)] = stages } }
            } catch let error as EngineError {
                StorageLog.write(.warning, "template_skipped", [("template_id", id), ("reason", error.message),
                    ("effect", "tasks of this template created here need their stages registered on this engine")])
            } catch {}
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
