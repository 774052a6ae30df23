/// The engine's configuration, parsed from `config_json` (SPEC §4). Unknown keys and values of the wrong
/// type or range are errors, so a typo never silently falls back to a default.
struct EngineConfig: Sendable {
    var listen: String?
    var redisURL: String?
    /// With `redis_url`: the largest preview PNG also written to Redis (0: none), so any listener serves it.
    var redisPreviewMaxBytes = 2 << 20
    var namespace = "progress"
    var retentionSeconds = 86_400.0
    var throttleMs = 100
    var previewDir: String?
    var previewMilestones: [Double] = [25, 50, 75]
    var previewMaxSize = 512
    /// A preview every N steps instead of at milestones (0 = milestones).
    var previewEverySteps = 0
    var resourceIntervalMs = 1000
    var heartbeatTimeoutSeconds = 30.0
    /// A cancel request the runner has not answered after this long is warned about in the task's log (once).
    var cancelTimeoutSeconds = 60.0
    var authToken: String?
    var maxConnections = 1024
    /// WebSocket connections allowed from one peer address (nil: only max_connections applies).
    var maxConnectionsPerIP: Int?
    /// Origins a browser page may use the listener from (`OriginPolicy`): its WebSockets (nil: any; a request
    /// without Origin, which is not a browser's, is always accepted) and cross-origin REST reads (CORS; nil: none).
    /// Normalized; `"*"` is every origin.
    var allowedOrigins: Set<String>?
    var maxMessageBytes = 65_536
    var maxSubscriptions = 1000
    var dashboard = true
    /// Offer permessage-deflate to WebSocket clients that ask for it (docs/API.md "Compression").
    var wsDeflate = false

    static let keys: Set<String> = [
        "listen", "redis_url", "namespace", "retention_seconds", "throttle_ms", "preview_dir",
        "preview_milestones", "preview_max_size", "preview_every_steps", "resource_interval_ms", "heartbeat_timeout_seconds",
        "auth_token", "max_connections", "max_message_bytes", "max_subscriptions", "dashboard",
        "max_connections_per_ip", "allowed_origins", "cancel_timeout_seconds", "redis_preview_max_bytes",
        "ws_deflate",
    ]

    /// Parses `config_json`; nil or empty text gives the defaults.
    /// - Throws: `EngineError.json` for malformed JSON, `EngineError.config` for unknown keys or bad values.
    static func parse(_ text: String?) throws -> EngineConfig {
        var config = EngineConfig()
        guard let text, !text.allSatisfy({ $0 == " " || $0 == "\n" || $0 == "\t" || $0 == "\r" }) else {
            return config
        }
        let reader = try JSONObjectReader(try JSONParser.parse(text, context: "config_json"), context: "config_json")
        try reader.rejectUnknownKeys(allowed: keys, error: EngineError.config)
        do {
            config.listen = try reader.string("listen")
            config.redisURL = try reader.string("redis_url")
            // At most what a listener serves (`Routes.maxPreviewBytes`).
            config.redisPreviewMaxBytes = try integer(reader, "redis_preview_max_bytes", in: 0...(32 << 20))
                ?? config.redisPreviewMaxBytes
            if let ns = try reader.string("namespace") {
                guard !ns.isEmpty, ns.utf8.count <= 64, ns.allSatisfy({ $0.isLetter || $0.isNumber || "-_.:".contains($0) })
                else { throw EngineError.config("namespace \"\(ns)\" must be 1-64 letters, digits or -_.:") }
                config.namespace = ns
            }
            config.retentionSeconds = try seconds(reader, "retention_seconds", from: 0) ?? config.retentionSeconds
            config.throttleMs = try integer(reader, "throttle_ms", in: 0...60_000) ?? config.throttleMs
            if let dir = try reader.string("preview_dir") {
                guard !dir.isEmpty else { throw EngineError.config("preview_dir must not be empty") }
                config.previewDir = dir
            }
            if let milestones = try reader.array("preview_milestones") {
                config.previewMilestones = try milestones.map { m in
                    guard case let .number(n) = m, n > 0, n < 100 else {
                        throw EngineError.config("preview_milestones must be numbers between 0 and 100 (exclusive)")
                    }
                    return n
                }.sorted()
            }
            config.previewMaxSize = try integer(reader, "preview_max_size", in: 16...8192) ?? config.previewMaxSize
            config.previewEverySteps = try integer(reader, "preview_every_steps", in: 0...1_000_000) ?? config.previewEverySteps
            config.resourceIntervalMs = try integer(reader, "resource_interval_ms", in: 10...3_600_000)
                ?? config.resourceIntervalMs
            // Heartbeats go every third of the timeout, at most every 50 ms (`RedisWriter.heartbeatInterval`).
            config.heartbeatTimeoutSeconds = try seconds(reader, "heartbeat_timeout_seconds", from: 0.15)
                ?? config.heartbeatTimeoutSeconds
            config.cancelTimeoutSeconds = try seconds(reader, "cancel_timeout_seconds", from: 0.001)
                ?? config.cancelTimeoutSeconds
            if let token = try reader.string("auth_token") {
                guard !token.isEmpty else { throw EngineError.config("auth_token must not be empty (omit it for open access)") }
                // A header's value reaches the listener without its leading and trailing blanks: such a token
                // could never match.
                guard token.utf8.allSatisfy({ $0 > 0x20 && $0 != 0x7F }) else {
                    throw EngineError.config("auth_token must not contain spaces or control characters")
                }
                config.authToken = token
            }
            config.maxConnections = try integer(reader, "max_connections", in: 1...1_000_000) ?? config.maxConnections
            config.maxMessageBytes = try integer(reader, "max_message_bytes", in: 256...(64 << 20)) ?? config.maxMessageBytes
            config.maxSubscriptions = try integer(reader, "max_subscriptions", in: 1...1_000_000) ?? config.maxSubscriptions
            config.dashboard = try reader.bool("dashboard") ?? config.dashboard
            config.wsDeflate = try reader.bool("ws_deflate") ?? config.wsDeflate
            config.maxConnectionsPerIP = try integer(reader, "max_connections_per_ip", in: 1...1_000_000)
            if let origins = try reader.array("allowed_origins") {
                config.allowedOrigins = Set(try origins.map { o in
                    guard case let .string(s) = o, !s.isEmpty, s.utf8.count <= 1024 else {
                        throw EngineError.config("allowed_origins must be an array of origins such as \"https://app.example.com\"")
                    }
                    let origin = EngineConfig.normalizedOrigin(s)
                    guard origin == "*" || EngineConfig.isOrigin(origin) else {
                        throw EngineError.config("allowed_origins: \"\(s)\" is not an origin: write scheme://host[:port] "
                            + "with no path, such as \"https://app.example.com\" or \"http://localhost:3000\", or \"*\" for any")
                    }
                    return origin
                })
            }
        } catch let error as EngineError where error.status == EngineError.json("").status {
            // A value of the wrong type is a configuration mistake, reported as such.
            throw EngineError.config(error.message)
        }
        return config
    }

    /// Origins compare case-insensitively (scheme and host are), without a trailing slash.
    static func normalizedOrigin(_ s: String) -> String {
        var o = s.lowercased()
        while o.hasSuffix("/") { o.removeLast() }
        return o
    }

    /// `scheme://host[:port]` (normalized) as a browser sends it in Origin. Anything else could never match a
    /// browser's Origin (a path, no scheme), so it is a typo; `null` (sandboxed frames, `file:` pages) is refused as
    /// it stands for no origin in particular. No space or control character, so an origin echoed in a header stays
    /// one header.
    static func isOrigin(_ origin: String) -> Bool {
        let bytes = Array(origin.utf8)
        guard let colon = bytes.firstIndex(of: UInt8(ascii: ":")), colon > 0,
              bytes[colon...].starts(with: "://".utf8), bytes.count > colon + 3 else { return false }
        func isLetter(_ b: UInt8) -> Bool { b >= UInt8(ascii: "a") && b <= UInt8(ascii: "z") }
        let scheme = bytes[..<colon], authority = bytes[(colon + 3)...]
        guard isLetter(scheme[scheme.startIndex]), scheme.allSatisfy({ b in
            isLetter(b) || (b >= UInt8(ascii: "0") && b <= UInt8(ascii: "9")) || "+-.".utf8.contains(b)
        }) else { return false }
        // Printable ASCII: browsers send hosts in their ASCII (punycode) form.
        return authority.allSatisfy { b in b > 0x20 && b < 0x7F && !"/?#@\\".utf8.contains(b) }
    }

    /// The longest time a key takes: 100 years (a Redis expiry in milliseconds, an interval in `Double` seconds).
    static let maxSeconds = 3_153_600_000.0

    private static func seconds(_ reader: JSONObjectReader, _ key: String, from low: Double) throws -> Double? {
        guard let value = try reader.number(key) else { return nil }
        guard value >= low, value <= maxSeconds else {
            throw EngineError.config("\(key) must be within \(low)...\(Int(maxSeconds)) (seconds), got \(value)")
        }
        return value
    }

    private static func integer(_ reader: JSONObjectReader, _ key: String, in range: ClosedRange<Int>) throws -> Int? {
        guard let value = try reader.integer(key) else { return nil }
        guard range.contains(Int(value)) else {
            throw EngineError.config("\(key) must be within \(range.lowerBound)...\(range.upperBound), got \(value)")
        }
        return Int(value)
    }
}
