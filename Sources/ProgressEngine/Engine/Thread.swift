import CProgress
import Glibc

/// The body of a thread started by `startThread` and its name, boxed so they cross pthread_create's `void *`.
private final class ThreadBody {
    let name: String
    let run: () -> Void

    init(_ name: String, _ run: @escaping () -> Void) {
        self.name = name
        self.run = run
    }
}

/// Every signal but those a thread raises itself on a fault (and SIGABRT, which abort() unblocks anyway), and
/// SIGPROF, with which profilers sample and Swift's crash reporter pauses every thread of the process.
private let asynchronousSignals: sigset_t = {
    var set = sigset_t()
    sigfillset(&set)
    for open in [SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGSYS, SIGABRT, SIGPROF] { sigdelset(&set, open) }
    return set
}()

/// Starts a pthread running `body` (which keeps what it captures alive until it returns).
///
/// The thread starts with every asynchronous signal blocked: a signal sent to the process is taken by one of
/// the host's threads, whose handlers expect it there (CPython 3.11 runs a handler late when its C-level
/// handler fires on a thread other than the main one), and a SIGPIPE from a write on one of the engine's
/// sockets stays pending on the engine's thread instead of ending a host that did not ignore it. The mask is
/// set on the calling thread around pthread_create, which the new thread inherits, so there is no window before
/// its first instruction.
/// - Parameters:
///   - what: the thread, for the error message ("the Redis writer thread").
///   - name: its name for ps, top -H, gdb and crash reports ("pe-redis-writer": at most 15 bytes), set by the
///     thread itself before its body runs.
/// - Returns: the thread, to be joined by its owner.
/// - Throws: `EngineError.io` if the thread cannot be created.
func startThread(_ what: String, name: String, _ body: @escaping () -> Void) throws -> pthread_t {
    precondition(name.utf8.count <= 15, "a thread name holds at most 15 bytes")
    var thread = pthread_t()
    let context = Unmanaged.passRetained(ThreadBody(name, body)).toOpaque()
    var blocked = asynchronousSignals
    var callers = sigset_t()
    pthread_sigmask(SIG_BLOCK, &blocked, &callers)
    let rc = pthread_create(&thread, nil, { raw in
        let body = Unmanaged<ThreadBody>.fromOpaque(raw!).takeRetainedValue()
        _ = CProgress_name_this_thread(body.name)
        body.run()
        return nil
    }, context)
    pthread_sigmask(SIG_SETMASK, &callers, nil)
    guard rc == 0 else {
        Unmanaged<ThreadBody>.fromOpaque(context).release()
        throw EngineError.io("cannot start \(what): pthread_create returned \(rc) (\(String(cString: strerror(rc))))")
    }
    return thread
}

/// A background thread of the engine with the mutex and condition variable its owner guards its queue with,
/// and the stop protocol all of them share: set `stopping` under the lock, signal, join.
/// The owner starts it once (`start`), calls `stop()` from its own stop (idempotent), and reads `stopping`
/// and its own queue only between `lock()` and `unlock()`.
final class WorkerThread: @unchecked Sendable {
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let cond = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private var thread = pthread_t()
    private var running = false
    /// Set by `stop()`. Guarded by the lock.
    private(set) var stopping = false

    init() {
        pthread_mutex_init(mutex, nil)
        var attr = pthread_condattr_t()
        pthread_condattr_init(&attr)
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC)  // timed waits do not move with the wall clock
        pthread_cond_init(cond, &attr)
        pthread_condattr_destroy(&attr)
    }

    deinit {
        pthread_cond_destroy(cond)
        pthread_mutex_destroy(mutex)
        cond.deallocate()
        mutex.deallocate()
    }

    /// Starts the thread (see `startThread`).
    func start(_ what: String, name: String, _ body: @escaping () -> Void) throws {
        thread = try startThread(what, name: name, body)
        running = true
    }

    func lock() { pthread_mutex_lock(mutex) }
    func unlock() { pthread_mutex_unlock(mutex) }

    /// Wakes the thread if it waits. Called with the lock held.
    func signal() { pthread_cond_signal(cond) }

    /// Waits for a signal. Called with the lock held (released while waiting).
    func wait() { pthread_cond_wait(cond, mutex) }

    /// Waits for a signal or `seconds` (at most an hour). Called with the lock held (released while waiting).
    func wait(seconds: Double) {
        var deadline = timespec()
        clock_gettime(CLOCK_MONOTONIC, &deadline)
        let ns = Int(deadline.tv_nsec) + Int(min(max(seconds, 0), 3600) * 1e9)
        deadline.tv_sec += ns / 1_000_000_000
        deadline.tv_nsec = ns % 1_000_000_000
        pthread_cond_timedwait(cond, mutex, &deadline)
    }

    /// Sets `stopping`, wakes the thread and waits for it to end. Idempotent.
    func stop() {
        lock()
        stopping = true
        signal()
        unlock()
        if running {
            pthread_join(thread, nil)
            running = false
        }
    }
}
