import CProgress
import Glibc

/// The fleet side of an engine with a listener (SPEC §2 topology 3): on a thread and a hiredis context of its
/// own, it SUBSCRIBEs to the update channel and applies what other engines publish to local mirror records, so
/// the listener's ordinary fan-out sends them to this engine's clients. Its own engine's messages are ignored;
/// mirrors are never written back or published again.
///
/// Every heartbeat_timeout_seconds / 3 it also looks for executing tasks whose engine stopped heartbeating
/// and fails them with "worker lost" (written and published as this engine's own change).
final class RedisSubscriber: @unchecked Sendable {
    unowned let engine: any SubscriberSource
    unowned let storage: RedisStorage
    private var thread = pthread_t()
    private var running = false
    /// A pipe whose write end wakes the thread out of `poll` when the engine closes.
    private var wakePipe: [Int32] = [-1, -1]
    private var wakeFD: Int32 { wakePipe[0] }
    private let stopping = Locked(false)
    private var connection: RedisConnection?
    private var everConnected = false
    /// Monotonic time since which the current connection is up (a scan for lost workers waits until the
    /// workers had a heartbeat interval to reconnect too).
    private var connectedSince = Double.infinity
    private var backoff = 0.05
    private var nextConnectAt = 0.0
    private var lastScan = -Double.infinity
    private let scanInterval: Double

    init(engine: any SubscriberSource, storage: RedisStorage) throws {
        self.engine = engine
        self.storage = storage
        scanInterval = max(0.05, engine.config.heartbeatTimeoutSeconds / 3)
        guard CProgress_pipe_cloexec(&wakePipe) == 0 else {
            throw EngineError.io("cannot create the Redis subscriber's pipe: errno \(errno)")
        }
        do {
            thread = try startThread("the Redis subscriber thread", name: "pe-redis-sub") { [self] in self.loop() }
        } catch {
            close(wakePipe[0])
            close(wakePipe[1])
            throw error
        }
        running = true
    }

    /// Stops and joins the thread. Idempotent: a second call touches no descriptor (the pipe's numbers may
    /// belong to something else of the host's by then).
    func stop() {
        guard running else { return }
        stopping.withLock { $0 = true }
        var one: UInt8 = 1
        _ = Glibc.write(wakePipe[1], &one, 1)
        pthread_join(thread, nil)
        running = false
        close(wakePipe[0])
        close(wakePipe[1])
        wakePipe = [-1, -1]
    }

    private var isStopping: Bool { stopping.withLock { $0 } }

    private func loop() {
        while !isStopping {
            let now = engine.monotonic.now()
            if connection == nil && now >= nextConnectAt { connect(now: now) }
            if connection != nil && now - lastScan >= scanInterval {
                lastScan = now
                if now - connectedSince >= engine.config.heartbeatTimeoutSeconds { scanForLostWorkers() }
            }
            var wait = lastScan + scanInterval - engine.monotonic.now()
            if connection == nil { wait = min(wait, nextConnectAt - engine.monotonic.now()) }
            var fds = [pollfd(fd: wakeFD, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: connection?.fileDescriptor ?? -1, events: Int16(POLLIN), revents: 0)]
            let rc = poll(&fds, 2, Int32(max(1, min(1000, wait * 1000))))
            if rc > 0 && fds[1].revents != 0, let connection {
                do {
                    try connection.readSocket()
                    while let reply = try connection.bufferedReply() { handle(reply) }
                } catch let e as EngineError {
                    lost(e.message)
                } catch {}
            }
        }
        connection = nil
    }

    private func connect(now: Double) {
        do {
            let c = try RedisConnection(url: storage.url, timeout: 1)
            let reply = try c.command(["SUBSCRIBE", RedisArgument(storage.keys.channel)])
            guard case .array = reply else { throw EngineError.io("SUBSCRIBE answered \(reply)") }
            connection = c
            connectedSince = engine.monotonic.now()
            if everConnected { storage.metrics.reconnects.add(1, ordering: .relaxed) }
            StorageLog.write(.info, everConnected ? "reconnected" : "connected", [("redis", storage.url.display),
                                                                                  ("role", "subscriber")])
            everConnected = true
            backoff = 0.05
            // Messages published while this engine was not subscribed are lost: catch the mirrors up.
            engine.refreshMirrors(from: storage)
        } catch let e as EngineError {
            nextConnectAt = now + backoff
            backoff = min(backoff * 2, 2)
            _ = e
        } catch {}
    }

    private func lost(_ why: String) {
        connection = nil
        connectedSince = .infinity
        nextConnectAt = engine.monotonic.now() + backoff
        StorageLog.write(.warning, "disconnected", [("redis", storage.url.display), ("role", "subscriber"),
            ("reason", why), ("retry_in_s", String(backoff)),
            ("effect", "other engines' tasks are not mirrored until Redis answers (their states are read again then): "
                + "check that redis-server runs and is reachable at this address")])
    }

    /// A pub/sub message: ["message", channel, payload].
    private func handle(_ reply: RedisReply) {
        guard case let .array(parts) = reply, parts.count == 3, parts[0].text == "message",
              case let .string(payload) = parts[2] else { return }
        guard let value = try? payload.withUnsafeBufferPointer({ try JSONParser.parse(bytes: $0, context: "update") }),
              let r = try? JSONObjectReader(value, context: "update"),
              let engineId = try? r.string("engine"), engineId != storage.engineId,
              let state = r.value("state"), let stored = try? StoredTask.parse(state)
        else { return }
        let events = (r.value("events").flatMap { try? StoredEvents.parseEvents($0) }) ?? []
        var logs: [LogEntry] = []
        if case let .array(items)? = r.value("logs") { logs = items.compactMap { try? StoredEvents.parseLog($0) } }
        let first = UInt64(max(0, (try? r.integer("first")) ?? 0))
        let complete = (try? r.bool("complete")) ?? false
        engine.applyRemote(stored, events: events, firstSeq: first, complete: complete, logs: logs)
        storage.metrics.remoteUpdates.add(1, ordering: .relaxed)
    }

    /// Fails every executing task whose engine has not heartbeated for heartbeat_timeout_seconds.
    private func scanForLostWorkers() {
        let before = SystemClock().now() - engine.config.heartbeatTimeoutSeconds
        guard let ids = storage.staleHeartbeats(before: before) else { return }
        for id in ids { engine.failLostWorker(id: id, storage: storage) }
    }
}
