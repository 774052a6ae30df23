import Glibc

/// The process's open-file limit, raised for the listener's connections (Go's runtime does the same for every
/// program): a default soft limit of 1,024 would refuse connections long before `max_connections`.
enum FileLimit {
    /// Descriptors besides the WebSocket connections: the listening socket, the loop's own, Redis, the
    /// runner's files.
    static let reserve = 64

    /// Raises the soft `RLIMIT_NOFILE` toward the hard limit, as far as `connections` plus `reserve` need, never
    /// lowering it; logs when the hard limit caps it below that. Called before the listener is created, since
    /// libwebsockets sizes its descriptor table from the limit at that moment.
    /// - Returns: the soft limit in force afterwards.
    @discardableResult
    static func raise(toHold connections: Int) -> UInt64 {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return 0 }
        let needed = rlim_t(connections + reserve)
        // rlim_t.max is RLIM_INFINITY, which Swift does not import (its macro casts -1).
        guard limit.rlim_cur != rlim_t.max, limit.rlim_cur < needed else { return UInt64(limit.rlim_cur) }
        let capped = limit.rlim_max != rlim_t.max && limit.rlim_max < needed
        let target = capped ? limit.rlim_max : needed
        if target > limit.rlim_cur {
            var raised = limit
            raised.rlim_cur = target
            if setrlimit(Int32(RLIMIT_NOFILE.rawValue), &raised) == 0 { limit = raised }
        }
        if capped {
            EngineLog.write(.warning, "fd_limit", [
                ("message", "max_connections \(connections) needs about \(needed) file descriptors, but the hard "
                    + "limit (RLIMIT_NOFILE) is \(limit.rlim_max): the listener can hold about "
                    + "\(max(Int(limit.rlim_max) - reserve, 0)) connections; raise the hard limit "
                    + "(ulimit -Hn, systemd's LimitNOFILE=) or lower max_connections"),
                ("soft_limit", String(limit.rlim_cur)), ("hard_limit", String(limit.rlim_max)),
            ], component: "listener")
        }
        return UInt64(limit.rlim_cur)
    }
}
