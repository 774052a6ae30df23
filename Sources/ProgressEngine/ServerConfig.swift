/// Configuration merging for hosts of the engine (`progress-server`), kept here so hosts reuse the engine's
/// strict JSON parser instead of carrying their own.
public enum ServerConfig {
    /// Merges a config file's JSON object with command-line overrides (overrides win) into `config_json`.
    /// - Parameters:
    ///   - fileJSON: the file's text, or nil.
    ///   - overrides: string-valued keys set on the command line (e.g. "listen", "redis_url").
    /// - Returns: the JSON text for `progress_engine_open`.
    /// - Throws: an error whose description says what is wrong with the file.
    public static func merge(fileJSON: String?, overrides: [(String, String)]) throws -> String {
        var members: [(String, JSONValue)] = []
        if let fileJSON {
            let value = try JSONParser.parse(fileJSON, context: "the --config file")
            guard case let .object(fileMembers) = value else {
                throw EngineError.config("the --config file must hold a JSON object, got \(value.typeName)")
            }
            members = fileMembers
        }
        for (key, value) in overrides {
            members.removeAll { $0.0 == key }
            members.append((key, .string(value)))
        }
        return JSONValue.object(members).serialized()
    }
}
