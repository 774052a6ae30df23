import CProgress
import Glibc

/// A lock the fork handlers hold across `fork()` (see `EngineCore.forkLocks`).
protocol ForkLock: AnyObject {
    func lock()
    func unlock()
}

extension Locked: ForkLock {}

/// The engines open in this process, and the `pthread_atfork` handlers (installed once, with the first engine)
/// that keep each of them usable on both sides of a `fork()`.
///
/// prepare: the registry's lock, then each engine's locks in `EngineCore.forkLocks` order, so that no lock a child
/// goes on using is in the middle of a critical section of a thread the child will not have.
/// parent: releases them. child: releases them and gives every engine fresh threads (`EngineCore.restartInChild`).
/// docs/THREADING.md says what a child inherits.
enum ForkRegistry {
    /// `engines`: unretained, since an engine leaves in `close()` or `deinit`, before it goes. `held`: the locks
    /// prepare took, per engine, in the order taken. The lock is held from prepare to parent / child.
    private static let registry = Locked<(engines: [Unmanaged<EngineCore>], held: [[any ForkLock]])>(([], []))
    private static let installHandlers: Void = {
        let rc = pthread_atfork({ ForkRegistry.prepare() }, { ForkRegistry.parent() }, { ForkRegistry.child() })
        if rc != 0 {
            EngineLog.write(.error, "fork_handlers", [("message", "pthread_atfork returned \(rc): engines "
                + "open before a fork() are unusable in the child")])
        }
    }()

    /// Registers an engine whose threads are running.
    static func add(_ engine: EngineCore) {
        _ = installHandlers
        registry.withLock { $0.engines.append(Unmanaged.passUnretained(engine)) }
    }

    /// Unregisters an engine; idempotent.
    static func remove(_ engine: EngineCore) {
        registry.withLock { $0.engines.removeAll { $0.toOpaque() == Unmanaged.passUnretained(engine).toOpaque() } }
    }

    private static func prepare() {
        warmRuntime()
        registry.lock()
        registry.unsafeValue.held = registry.unsafeValue.engines.map { engine in
            engine._withUnsafeGuaranteedRef { engine in
                let locks = engine.forkLocks()
                for lock in locks { lock.lock() }
                return locks
            }
        }
    }

    private static func parent() {
        releaseHeld()
        registry.unlock()
    }

    private static func child() {
        // Only this thread exists now; the state under each lock is whole, so it is cleared before the locks go.
        let engines = registry.unsafeValue.engines
        for engine in engines { engine._withUnsafeGuaranteedRef { $0.clearInChild() } }
        releaseHeld()
        for engine in engines { engine._withUnsafeGuaranteedRef { $0.restartInChild() } }
        registry.unlock()
    }

    /// Swift's runtime sets some of its caches up lazily, each under a once of its own, on first use by whichever
    /// thread comes first; it has no fork handlers. A fork taken while another thread is inside such a once leaves
    /// it "in progress" for good in the child, whose first use then waits forever. Seen under TSan with forks
    /// within milliseconds of progress_engine_open: the child stuck in swift_getTupleTypeMetadata (the tuple cache,
    /// first used by a thread's first log line) and in swift_getCanonicalPrespecializedGenericMetadata (first
    /// used by `Array(set)`, `append(contentsOf:)`). Used here first, those onces are done before the fork.
    /// The same holds for each type's own metadata, built on its first use: the ETA's statistics (tuples and
    /// arrays of its own types) are first built by the listener's or the Redis writer's first estimate, which a
    /// fork right after opening met in fork_stress (the child stuck in `HistoryStatistics` asking for its tuple's
    /// metadata). Built here, their metadata is complete before the fork; if another thread is building it now,
    /// this waits for that.
    @inline(never)
    private static func warmRuntime() {
        let pid = String(getpid())
        let fields = [("pid", pid)]
        var names: [String] = []
        names.append(contentsOf: Array(Set([pid])))
        withExtendedLifetime((fields, names, HistoryStatistics.warm())) {}
    }

    /// Under the registry's lock.
    private static func releaseHeld() {
        for locks in registry.unsafeValue.held {
            for lock in locks.reversed() { lock.unlock() }
        }
        registry.unsafeValue.held = []
    }
}

/// Keeps an object of the parent's threads alive for good in a forked child: its deinit would join, signal or
/// tear down threads and contexts that this process does not have (a condition variable the parent's thread
/// waited on, a libwebsockets context whose sockets the parent still serves).
func abandonInChild(_ object: AnyObject?) {
    if let object { _ = Unmanaged.passRetained(object) }
}

extension EngineCore {
    /// The engine's locks a forked child goes on using, in the one order the fork handlers take them. It follows
    /// the order they nest in: locks taken on their own or before a shard lock, then the 64 shard locks (in table
    /// order), then the locks taken inside a shard lock (the queue board, the completion history). The listener's,
    /// the Redis writer's, the subscriber's, the preview and maintenance threads' own locks are not among them: a
    /// child never uses those objects (it gets new ones), so what they guard may stay mid-change.
    func forkLocks() -> [any ForkLock] {
        var locks: [any ForkLock] = [templates, batches, counterTasks, cancelWatch, unknownRejects, lastSweep,
                                      resourceSampler]
        locks += store.forkLocks
        locks += table.allShards as [any ForkLock]
        locks += [queues.lockForFork, completions.lockForFork]
        return locks
    }

    /// In a forked child, every lock of `forkLocks` held by the only thread: drops what belongs to the parent.
    /// The parent's tasks (and with them their batches, queue lines, attached counters and pending writes) stay
    /// the parent's; templates and the completion history (ETA) are kept; counters start from zero.
    func clearInChild() {
        for shard in table.allShards { shard.unsafeValue = ShardState() }
        batches.unsafeValue.removeAll()
        counterTasks.unsafeValue.removeAll()
        cancelWatch.unsafeValue.removeAll()
        resourceSampler.unsafeValue = ResourceSampler()  // CPU time is counted per process
        queues.clearInChild()
        misses.store(0, ordering: .relaxed)
        events.store(0, ordering: .relaxed)
        logCount.store(0, ordering: .relaxed)
        purged.store(0, ordering: .relaxed)
        previewsWritten.store(0, ordering: .relaxed)
        previewsFailed.store(0, ordering: .relaxed)
        previewsDropped.store(0, ordering: .relaxed)
        store.clearInChild()
    }

    /// In a forked child, after `clearInChild` and with the locks released: the engine's threads are the parent's
    /// and are not here. The child gets a preview thread, a maintenance thread and a Redis writer (new connection,
    /// new engine id on the update channel) of its own, and no listener. A thread that cannot start is logged
    /// and left out (fork handlers cannot fail): without a writer the child keeps its tasks in memory only.
    func restartInChild() {
        if let listener {
            listener.forgetInChild()
            abandonInChild(listener)
            self.listener = nil
        }
        // The preview folder stays the parent's to remove, even when the engine made it.
        ownedPreviewDir = nil
        let previewDir = previews?.directory
        abandonInChild(previews)
        previews = nil
        if let previewDir {
            do { try startPreviewWorker(directory: previewDir) } catch { logChildStart(error) }
        }
        if maintenance != nil {
            abandonInChild(maintenance)
            maintenance = nil
            do { try startMaintenance() } catch { logChildStart(error) }
        }
        do { try store.restartInChild(engine: self) } catch { logChildStart(error) }
        storeWriter = store.writer
    }

    private func logChildStart(_ error: Error) {
        let message = (error as? EngineError)?.message ?? "\(error)"
        EngineLog.write(.error, "fork_child", [("message", message)])
    }
}
