/// `redis_url`: `redis://[[user]:password@]host[:port][/db]` (SPEC §4).
struct RedisURL: Equatable, Sendable {
    let host: String
    let port: Int
    let password: String?
    let database: Int

    /// The URL without its password, for messages and logs.
    var display: String { "redis://\(host):\(port)/\(database)" }

    /// Parses a `redis_url`.
    /// - Throws: `EngineError.config` saying what to fix.
    static func parse(_ text: String) throws -> RedisURL {
        let example = "e.g. \"redis://127.0.0.1:6379/0\" or \"redis://:secret@redis.internal:6379\""
        guard text.hasPrefix("redis://") else {
            throw EngineError.config("redis_url \"\(text)\" must start with redis:// (\(example))")
        }
        var rest = Substring(text.dropFirst("redis://".count))
        var password: String?
        if let at = rest.lastIndex(of: "@") {
            let credentials = rest[..<at]
            rest = rest[rest.index(after: at)...]
            // "user:password" or ":password" (Redis < 6 has no user names); a lone word is a password.
            let secret = credentials.firstIndex(of: ":").map { credentials[credentials.index(after: $0)...] } ?? credentials
            guard !secret.isEmpty else {
                throw EngineError.config("redis_url: the password before \"@\" is empty; remove \"@\" or give one (\(example))")
            }
            password = String(secret)
        }
        var database = 0
        if let slash = rest.firstIndex(of: "/") {
            let dbText = rest[rest.index(after: slash)...]
            rest = rest[..<slash]
            if !dbText.isEmpty {
                guard let db = Int(dbText), (0...65535).contains(db) else {
                    throw EngineError.config("redis_url: database \"\(dbText)\" must be a number >= 0 (\(example))")
                }
                database = db
            }
        }
        var host = String(rest)
        var port = 6379
        if let colon = rest.lastIndex(of: ":") {
            host = String(rest[..<colon])
            let portText = rest[rest.index(after: colon)...]
            guard let p = Int(portText), (1...65535).contains(p) else {
                throw EngineError.config("redis_url: port \"\(portText)\" must be a number within 1...65535 (\(example))")
            }
            port = p
        }
        guard !host.isEmpty else { throw EngineError.config("redis_url \"\(text)\" has no host (\(example))") }
        guard !host.contains("?"), !host.contains("["), !host.contains(" ") else {
            throw EngineError.config("redis_url: host \"\(host)\" is not a host name or IPv4 address (\(example))")
        }
        return RedisURL(host: host, port: port, password: password, database: database)
    }
}
