import CLibhiredis
import Glibc

/// A reply of Redis, copied out of hiredis' reply object (which is freed at once).
enum RedisReply: Equatable {
    case string([UInt8])
    case status(String)
    case integer(Int64)
    case array([RedisReply])
    case error(String)
    case null

    /// The reply as UTF-8 text (bulk strings and status replies), else nil.
    var text: String? {
        switch self {
        case let .string(bytes): return String(decoding: bytes, as: UTF8.self)
        case let .status(s): return s
        default: return nil
        }
    }

    var isError: Bool { if case .error = self { return true } else { return false } }
}

/// One hiredis context (blocking, TCP) with the argv API only, so no C varargs cross into Swift.
///
/// hiredis contexts are not thread-safe: each `RedisConnection` belongs to one thread at a time (the writer's,
/// the subscriber's, or the reader's lock holder).
final class RedisConnection {
    private var context: UnsafeMutablePointer<redisContext>?
    let url: RedisURL

    /// Connects, authenticates and selects the database.
    /// - Parameters:
    ///   - url: where Redis is.
    ///   - timeout: seconds for connecting and for every later read or write.
    /// - Throws: `EngineError.io` with hiredis' reason.
    init(url: RedisURL, timeout: Double) throws {
        self.url = url
        let tv = RedisConnection.timeval(timeout)
        guard let c = redisConnectWithTimeout(url.host, Int32(url.port), tv) else {
            throw EngineError.io("redis \(url.display): cannot allocate a connection")
        }
        context = c
        guard c.pointee.err == 0 else {
            let why = RedisConnection.errorText(c)
            redisFree(c)
            context = nil
            throw EngineError.io("redis \(url.display): \(why)")
        }
        // hiredis 0.14 opens its socket without SOCK_CLOEXEC: a program the host runs (system(), posix_spawn)
        // must not keep a copy of the connection open after this process has closed it.
        _ = fcntl(c.pointee.fd, F_SETFD, FD_CLOEXEC)
        redisSetTimeout(c, tv)
        if let password = url.password {
            if let user = url.user {
                try expectOK(command(["AUTH", RedisArgument(user), RedisArgument(password)]), "AUTH as user \"\(user)\"")
            } else {
                try expectOK(command(["AUTH", RedisArgument(password)]), "AUTH")
            }
        }
        if url.database != 0 {
            try expectOK(command(["SELECT", RedisArgument(String(url.database))]), "SELECT \(url.database)")
        }
    }

    deinit {
        if let context { redisFree(context) }
    }

    private func expectOK(_ reply: RedisReply, _ what: String) throws {
        if case let .error(message) = reply {
            throw EngineError.io("redis \(url.display): \(what) failed: \(message)")
        }
    }

    private static func timeval(_ seconds: Double) -> Glibc.timeval {
        let s = max(0.001, seconds)
        return Glibc.timeval(tv_sec: Int(s), tv_usec: Int((s - Double(Int(s))) * 1e6))
    }

    private static func errorText(_ c: UnsafeMutablePointer<redisContext>) -> String {
        withUnsafeBytes(of: c.pointee.errstr) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
    }

    /// The socket, for `poll` (the subscriber waits on it together with its wake-up descriptor).
    var fileDescriptor: Int32 { context?.pointee.fd ?? -1 }

    /// Changes the read/write timeout (the writer shortens it while the engine closes).
    func setTimeout(_ seconds: Double) {
        if let context { redisSetTimeout(context, RedisConnection.timeval(seconds)) }
    }

    /// Queues a command in the output buffer (sent by the next `reply()`), binary-safe.
    func append(_ args: [RedisArgument]) {
        guard let context else { return }
        RedisConnection.withArgv(args) { argc, argv, lengths in
            _ = redisAppendCommandArgv(context, argc, argv, lengths)
        }
    }

    /// Sends what is buffered and reads the next reply.
    /// - Throws: `EngineError.io` when the connection failed (it is unusable afterwards).
    func reply() throws -> RedisReply {
        guard let context else { throw EngineError.io("redis \(url.display): not connected") }
        var raw: UnsafeMutableRawPointer?
        guard redisGetReply(context, &raw) == REDIS_OK, let raw else {
            throw EngineError.io("redis \(url.display): \(RedisConnection.errorText(context))")
        }
        defer { freeReplyObject(raw) }
        return RedisConnection.convert(raw.assumingMemoryBound(to: redisReply.self))
    }

    /// A reply already read into hiredis' buffer, without touching the socket; nil when none is complete.
    func bufferedReply() throws -> RedisReply? {
        guard let context else { throw EngineError.io("redis \(url.display): not connected") }
        var raw: UnsafeMutableRawPointer?
        guard redisGetReplyFromReader(context, &raw) == REDIS_OK else {
            throw EngineError.io("redis \(url.display): \(RedisConnection.errorText(context))")
        }
        guard let raw else { return nil }
        defer { freeReplyObject(raw) }
        return RedisConnection.convert(raw.assumingMemoryBound(to: redisReply.self))
    }

    /// Reads what the socket holds into hiredis' buffer (after `poll` said it is readable).
    func readSocket() throws {
        guard let context, redisBufferRead(context) == REDIS_OK else {
            throw EngineError.io("redis \(url.display): \(context.map(RedisConnection.errorText) ?? "not connected")")
        }
    }

    /// One command, one reply.
    func command(_ args: [RedisArgument]) throws -> RedisReply {
        append(args)
        return try reply()
    }

    private static func convert(_ r: UnsafeMutablePointer<redisReply>) -> RedisReply {
        let reply = r.pointee
        switch reply.type {
        case REDIS_REPLY_STRING:
            return .string(reply.str == nil ? [] : Array(UnsafeRawBufferPointer(start: reply.str, count: reply.len)))
        case REDIS_REPLY_STATUS:
            return .status(reply.str == nil ? "" : String(decoding: UnsafeRawBufferPointer(start: reply.str, count: reply.len),
                                                          as: UTF8.self))
        case REDIS_REPLY_ERROR:
            return .error(reply.str == nil ? "" : String(decoding: UnsafeRawBufferPointer(start: reply.str, count: reply.len),
                                                         as: UTF8.self))
        case REDIS_REPLY_INTEGER:
            return .integer(Int64(reply.integer))
        case REDIS_REPLY_ARRAY:
            var items: [RedisReply] = []
            items.reserveCapacity(reply.elements)
            for i in 0..<reply.elements {
                if let element = reply.element[i] { items.append(convert(element)) } else { items.append(.null) }
            }
            return .array(items)
        default:
            return .null
        }
    }

    /// Lays `args` out as hiredis' argv/argvlen arrays for the duration of `body`.
    private static func withArgv<R>(_ args: [RedisArgument],
                                    _ body: (Int32, UnsafeMutablePointer<UnsafePointer<CChar>?>, UnsafePointer<Int>) -> R) -> R {
        var total = 0
        for a in args { total += a.bytes.count }
        let storage = UnsafeMutablePointer<UInt8>.allocate(capacity: max(total, 1))
        defer { storage.deallocate() }
        let argv = UnsafeMutablePointer<UnsafePointer<CChar>?>.allocate(capacity: args.count)
        defer { argv.deallocate() }
        let lengths = UnsafeMutablePointer<Int>.allocate(capacity: args.count)
        defer { lengths.deallocate() }
        var offset = 0
        for (i, a) in args.enumerated() {
            a.bytes.withUnsafeBufferPointer { src in
                if let base = src.baseAddress { (storage + offset).update(from: base, count: src.count) }
            }
            argv[i] = UnsafeRawPointer(storage + offset).assumingMemoryBound(to: CChar.self)
            lengths[i] = a.bytes.count
            offset += a.bytes.count
        }
        return body(Int32(args.count), argv, lengths)
    }
}

/// One argument of a Redis command: bytes, binary-safe.
struct RedisArgument: ExpressibleByStringLiteral {
    let bytes: [UInt8]

    init(_ bytes: [UInt8]) { self.bytes = bytes }
    init(_ text: String) { bytes = Array(text.utf8) }
    init(stringLiteral value: String) { bytes = Array(value.utf8) }
}
