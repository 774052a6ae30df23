import Glibc

/// The body of a thread started by `startThread`, boxed so it crosses pthread_create's `void *`.
private final class ThreadBody {
    let run: () -> Void

    init(_ run: @escaping () -> Void) {
        self.run = run
    }
}

/// Starts a pthread running `body` (which keeps what it captures alive until it returns).
/// - Parameter what: the thread, for the error message ("the Redis writer thread").
/// - Returns: the thread, to be joined by its owner.
/// - Throws: `EngineError.io` if the thread cannot be created.
func startThread(_ what: String, _ body: @escaping () -> Void) throws -> pthread_t {
    var thread = pthread_t()
    let context = Unmanaged.passRetained(ThreadBody(body)).toOpaque()
    let rc = pthread_create(&thread, nil, { raw in
        Unmanaged<ThreadBody>.fromOpaque(raw!).takeRetainedValue().run()
        return nil
    }, context)
    guard rc == 0 else {
        Unmanaged<ThreadBody>.fromOpaque(context).release()
        throw EngineError.io("cannot start \(what): pthread_create returned \(rc) (\(String(cString: strerror(rc))))")
    }
    return thread
}
