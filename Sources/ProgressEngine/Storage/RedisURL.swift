/// `redis_url`: `redis://[[user]:password@]host[:port][/db]` (SPEC §4).
struct RedisURL: Equatable, Sendable {
    let host: String
    let port: Int
    /// The ACL user (Redis 6+) of `user:password@`; nil for `:password@` or a lone password (the default user).
    var user: String? = nil
    let password: String?
    let database: Int

    init(host: String, port: Int, user: String? = nil, password: String?, database: Int) {
        self.host = host
        self.port = port
        self.user = user
        self.password = password
        self.database = database
    }

    /// The URL without its password, for messages and logs.
    var display: String { "redis://\(user.map { "\($0)@" } ?? "")\(host):\(port)/\(database)" }

    /// A `redis://` URL's credentials and the rest after them. Before the last "@": "user:password" (an ACL
    /// user, Redis 6+: AUTH user password), ":password" (the default user, as Redis < 6 has no user names: `user`
    /// empty) or a lone word, which is a password (`user` nil). `secret` is nil without "@".
    static func split(_ text: String) -> (user: Substring?, secret: Substring?, rest: Substring) {
        let afterScheme = Substring(text.dropFirst("redis://".count))
        guard let at = afterScheme.lastIndex(of: "@") else { return (nil, nil, afterScheme) }
        let credentials = afterScheme[..<at]
        let rest = afterScheme[afterScheme.index(after: at)...]
        guard let colon = credentials.firstIndex(of: ":") else { return (nil, credentials, rest) }
        return (credentials[..<colon], credentials[credentials.index(after: colon)...], rest)
    }

    /// Parses a `redis_url`.
    /// - Throws: `EngineError.config` saying what to fix.
    static func parse(_ text: String) throws -> RedisURL {
        let example = "e.g. \"redis://127.0.0.1:6379/0\" or \"redis://:secret@redis.internal:6379\""
        guard text.hasPrefix("redis://") else {
            throw EngineError.config("redis_url \"\(text)\" must start with redis:// (\(example))")
        }
        let parts = split(text)
        var rest = parts.rest
        var password: String?, user: String?
        if let secret = parts.secret {
            guard !secret.isEmpty else {
                throw EngineError.config("redis_url: the password before \"@\" is empty; remove \"@\" or give one (\(example))")
            }
            password = String(secret)
            if let name = parts.user, !name.isEmpty { user = String(name) }
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
        return RedisURL(host: host, port: port, user: user, password: password, database: database)
    }
}
