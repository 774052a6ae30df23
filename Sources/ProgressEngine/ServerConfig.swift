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

    /// The configuration of a server: `merge`, then `listen` set to `defaultListen` when neither the file nor the
    /// command line names it.
    /// - Throws: `EngineError.config` when `listen` is null or not a string: a server without a listener would
    ///   serve nothing.
    public static func server(fileJSON: String?, overrides: [(String, String)], defaultListen: String) throws -> String {
        guard case var .object(members) = try JSONParser.parse(merge(fileJSON: fileJSON, overrides: overrides),
                                                               context: "the configuration") else {
            throw EngineError.config("the configuration must be a JSON object")
        }
        switch members.first(where: { $0.0 == "listen" })?.1 {
        case nil:
            members.append(("listen", .string(defaultListen)))
        case .string?:
            break
        case let other?:
            throw EngineError.config("\"listen\" is \(other.typeName); progress-server needs a listen address "
                + "(\"host:port\", port 0 = any free port) to serve its clients")
        }
        return JSONValue.object(members).serialized()
    }

    /// `json` with its secrets masked, for logs: `auth_token`'s value and the password of `redis_url`.
    public static func redacted(_ json: String) -> String {
        guard case let .object(members)? = try? JSONParser.parse(json, context: "the configuration") else {
            return "(not a JSON object)"
        }
        return JSONValue.object(members.map { key, value in
            switch (key, value) {
            case ("auth_token", .string):
                return (key, .string("***"))
            case let ("redis_url", .string(url)):
                return (key, .string(maskPassword(url)))
            default:
                return (key, value)
            }
        }).serialized()
    }

    /// `redis://user:secret@host` → `redis://user:***@host` (and `:secret@`, `secret@` alike).
    static func maskPassword(_ url: String) -> String {
        guard url.hasPrefix("redis://") else { return url }
        let parts = RedisURL.split(url)
        guard parts.secret != nil else { return url }
        return "redis://" + (parts.user.map { $0 + ":" } ?? "") + "***@" + parts.rest
    }
}
