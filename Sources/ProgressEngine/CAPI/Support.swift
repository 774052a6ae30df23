import CProgress
import Glibc

// Shared plumbing of the exported thunks: pointer checks, string conversion, error mapping.
// Nothing here traps on caller input.

/// Records `error` as this thread's last error and returns its status code.
func reportError(_ error: EngineError) -> Int32 {
    var message = error.message
    message.withUTF8 { buf in
        buf.withMemoryRebound(to: CChar.self) { CProgress_set_last_error($0.baseAddress, $0.count) }
    }
    return error.status
}

/// Runs `body`, mapping a thrown error to its status code (and the thread's last error).
@inline(__always)
func runCall(_ body: () throws -> Void) -> Int32 {
    do {
        try body()
        return 0
    } catch let error as EngineError {
        return reportError(error)
    } catch {
        return reportError(.internal("unexpected error: \(error)"))
    }
}

/// The engine behind a handle, without touching its reference count (the caller's handle keeps it alive).
@inline(__always)
func withEngine(_ handle: OpaquePointer?, _ body: (EngineCore) throws -> Void) -> Int32 {
    guard let handle else { return reportError(.invalidArgument("engine is NULL; open one with progress_engine_open")) }
    return runCall {
        try Unmanaged<EngineCore>.fromOpaque(UnsafeRawPointer(handle))._withUnsafeGuaranteedRef { try body($0) }
    }
}

/// A yes/no question a runner may ask about its task every step (`progress_preview_due`,
/// `progress_task_cancel_requested`): `*answer` is 0 unless the call succeeds, the id is borrowed as the lookup key
/// like `progress_update`'s (no copy), and `ask` gets the key and the id for messages (made only on error).
@inline(__always)
func answerFlag(_ handle: OpaquePointer?, _ taskId: UnsafePointer<CChar>?, _ answer: UnsafeMutablePointer<CInt>?,
                named name: StaticString,
                _ ask: (EngineCore, TaskKey, () throws -> String) throws -> Bool) -> Int32 {
    answer?.pointee = 0
    return withEngine(handle) { engine in
        guard let answer else { throw EngineError.invalidArgument("\(name) is NULL; pass the address of an int") }
        guard let taskId else { throw EngineError.invalidArgument("task_id is NULL") }
        let key = TaskKey(borrowing: UnsafeRawBufferPointer(start: taskId, count: strlen(taskId)))
        answer.pointee = try ask(engine, key, { try requiredString(taskId, "task_id") }) ? 1 : 0
    }
}

/// A required string parameter.
func requiredString(_ p: UnsafePointer<CChar>?, _ name: StaticString) throws -> String {
    guard let p else { throw EngineError.invalidArgument("\(name) is NULL") }
    guard let s = String(validatingCString: p) else { throw EngineError.invalidArgument("\(name) is not valid UTF-8") }
    return s
}

/// An optional string parameter (NULL allowed).
func optionalString(_ p: UnsafePointer<CChar>?, _ name: StaticString) throws -> String? {
    guard let p else { return nil }
    return try requiredString(p, name)
}

/// Hands `s` to the caller as a malloc'd C string (freed with progress_string_free).
func handOut(_ s: String, to out: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) throws {
    guard let out else { throw EngineError.invalidArgument("out_json is NULL") }
    out.pointee = nil
    guard let copy = strdup(s) else { throw EngineError.limit("out of memory copying \(s.utf8.count) bytes of JSON") }
    out.pointee = copy
}
