import CProgress
import Glibc

// Every exported C function of include/progress.h, each a thin thunk: check pointers, call Swift, map errors.
// Keep this file and the header in step: an ABI test compares `nm -D` of the library with the header.

@_cdecl("progress_version_number")
public func progress_version_number() -> CInt {
    CProgress_version_number()
}

@_cdecl("progress_last_error")
public func progress_last_error() -> UnsafePointer<CChar> {
    CProgress_last_error()
}

@_cdecl("progress_status_string")
public func progress_status_string(_ status: CInt) -> UnsafePointer<CChar> {
    UnsafeRawPointer(EngineError.statusName(status).utf8Start).assumingMemoryBound(to: CChar.self)
}

@_cdecl("progress_string_free")
public func progress_string_free(_ s: UnsafeMutablePointer<CChar>?) {
    free(s)
}

@_cdecl("progress_engine_open")
public func progress_engine_open(_ configJSON: UnsafePointer<CChar>?,
                                 _ out: UnsafeMutablePointer<OpaquePointer?>?) -> CInt {
    guard let out else { return reportError(.invalidArgument("out is NULL; pass the address of a progress_engine *")) }
    out.pointee = nil
    return runCall {
        let config = try EngineConfig.parse(try optionalString(configJSON, "config_json"))
        let engine = try EngineCore(config: config)
        out.pointee = OpaquePointer(Unmanaged.passRetained(engine).toOpaque())
    }
}

@_cdecl("progress_engine_close")
public func progress_engine_close(_ handle: OpaquePointer?) {
    guard let handle else { return }
    let engine = Unmanaged<EngineCore>.fromOpaque(UnsafeRawPointer(handle)).takeRetainedValue()
    engine.close()
}

@_cdecl("progress_engine_port")
public func progress_engine_port(_ handle: OpaquePointer?) -> CInt {
    guard let handle else { return -1 }
    return CInt(Unmanaged<EngineCore>.fromOpaque(UnsafeRawPointer(handle))._withUnsafeGuaranteedRef { $0.port })
}

@_cdecl("progress_engine_stats_get")
public func progress_engine_stats_get(_ handle: OpaquePointer?,
                                      _ out: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    withEngine(handle) { try handOut($0.statsJSON(), to: out) }
}

/// The name before the header's progress_<object>_<verb> rule; kept so that nothing linked against it breaks.
@_cdecl("progress_engine_stats")
public func progress_engine_stats(_ handle: OpaquePointer?,
                                  _ out: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    progress_engine_stats_get(handle, out)
}

@_cdecl("progress_task_create")
public func progress_task_create(_ handle: OpaquePointer?, _ taskId: UnsafePointer<CChar>?,
                                 _ templateId: UnsafePointer<CChar>?, _ category: UnsafePointer<CChar>?,
                                 _ optionsJSON: UnsafePointer<CChar>?) -> CInt {
    withEngine(handle) { engine in
        try engine.createTask(id: try requiredString(taskId, "task_id"),
                              templateId: try requiredString(templateId, "template_id"),
                              category: try optionalString(category, "template_category"),
                              options: try TaskOptions.parse(try optionalString(optionsJSON, "options_json")))
    }
}

@_cdecl("progress_stage_update")
public func progress_stage_update(_ handle: OpaquePointer?, _ taskId: UnsafePointer<CChar>?, _ stage: CInt,
                                  _ status: CInt, _ progress: Double, _ message: UnsafePointer<CChar>?) -> CInt {
    withEngine(handle) { engine in
        let id = try requiredString(taskId, "task_id")
        guard let stageStatus = StageStatus(rawValue: status) else {
            throw EngineError.invalidArgument("stage status \(status) is not a progress_stage_status (0...4)")
        }
        try engine.updateStage(id: id, stage: Int(stage), status: stageStatus, progress: progress,
                               message: message.map(MessageArgument.cString) ?? .none)
    }
}

@_cdecl("progress_update")
public func progress_update(_ handle: OpaquePointer?, _ taskId: UnsafePointer<CChar>?, _ step: CLongLong,
                            _ totalSteps: CLongLong, _ message: UnsafePointer<CChar>?) -> CInt {
    withEngine(handle) { engine in
        guard let taskId else { throw EngineError.invalidArgument("task_id is NULL") }
        // The id is borrowed, not copied: the lookup hashes and compares the caller's bytes.
        let key = TaskKey(borrowing: UnsafeRawBufferPointer(start: taskId, count: strlen(taskId)))
        try engine.update(key: key, describe: { try requiredString(taskId, "task_id") }, step: Int64(step),
                          total: Int64(totalSteps), message: message.map(MessageArgument.cString) ?? .none)
    }
}

@_cdecl("progress_event")
public func progress_event(_ handle: OpaquePointer?, _ taskId: UnsafePointer<CChar>?, _ event: UnsafePointer<CChar>?,
                           _ dataJSON: UnsafePointer<CChar>?) -> CInt {
    withEngine(handle) { engine in
        try engine.event(id: try requiredString(taskId, "task_id"), name: try requiredString(event, "event"),
                         dataJSON: try optionalString(dataJSON, "data_json"))
    }
}

@_cdecl("progress_log")
public func progress_log(_ handle: OpaquePointer?, _ taskId: UnsafePointer<CChar>?, _ level: CInt,
                         _ message: UnsafePointer<CChar>?) -> CInt {
    withEngine(handle) { engine in
        let id = try requiredString(taskId, "task_id")
        guard let logLevel = LogLevel(rawValue: level) else {
            throw EngineError.invalidArgument("log level \(level) is not a progress_log_level (0...3)")
        }
        try engine.log(id: id, level: logLevel, message: try requiredString(message, "message"))
    }
}

@_cdecl("progress_preview_pixels")
public func progress_preview_pixels(_ handle: OpaquePointer?, _ taskId: UnsafePointer<CChar>?,
                                    _ pixels: UnsafePointer<UInt8>?, _ width: CInt, _ height: CInt, _ stride: CInt,
                                    _ channels: CInt) -> CInt {
    withEngine(handle) { engine in
        let id = try requiredString(taskId, "task_id")
        guard let pixels else { throw EngineError.invalidArgument("pixels is NULL") }
        try engine.previewPixels(id: id, pixels: pixels, width: Int(width), height: Int(height), stride: Int(stride),
                                 channels: Int(channels))
    }
}

@_cdecl("progress_preview_due")
public func progress_preview_due(_ handle: OpaquePointer?, _ taskId: UnsafePointer<CChar>?,
                                 _ due: UnsafeMutablePointer<CInt>?) -> CInt {
    answerFlag(handle, taskId, due, named: "due") { try $0.previewIsDue(key: $1, describe: $2) }
}

@_cdecl("progress_task_complete")
public func progress_task_complete(_ handle: OpaquePointer?, _ taskId: UnsafePointer<CChar>?) -> CInt {
    withEngine(handle) { try $0.complete(id: try requiredString(taskId, "task_id")) }
}

@_cdecl("progress_task_fail")
public func progress_task_fail(_ handle: OpaquePointer?, _ taskId: UnsafePointer<CChar>?,
                               _ error: UnsafePointer<CChar>?) -> CInt {
    withEngine(handle) { try $0.fail(id: try requiredString(taskId, "task_id"), error: try optionalString(error, "error")) }
}

@_cdecl("progress_task_cancel")
public func progress_task_cancel(_ handle: OpaquePointer?, _ taskId: UnsafePointer<CChar>?,
                                 _ reason: UnsafePointer<CChar>?) -> CInt {
    withEngine(handle) {
        try $0.cancel(id: try requiredString(taskId, "task_id"), reason: try optionalString(reason, "reason"))
    }
}

@_cdecl("progress_task_cancel_requested")
public func progress_task_cancel_requested(_ handle: OpaquePointer?, _ taskId: UnsafePointer<CChar>?,
                                           _ requested: UnsafeMutablePointer<CInt>?) -> CInt {
    answerFlag(handle, taskId, requested, named: "requested") { try $0.cancelRequested(key: $1, describe: $2) }
}

@_cdecl("progress_task_get")
public func progress_task_get(_ handle: OpaquePointer?, _ taskId: UnsafePointer<CChar>?,
                              _ out: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    out?.pointee = nil
    return withEngine(handle) { try handOut(try $0.taskJSON(id: try requiredString(taskId, "task_id")), to: out) }
}

@_cdecl("progress_batch_get")
public func progress_batch_get(_ handle: OpaquePointer?, _ batchId: UnsafePointer<CChar>?,
                               _ taskIdsCSV: UnsafePointer<CChar>?,
                               _ out: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    out?.pointee = nil
    return withEngine(handle) { engine in
        let batch = try requiredString(batchId, "batch_id")
        let csv = try optionalString(taskIdsCSV, "task_ids_csv")
        let ids = csv.flatMap { $0.isEmpty ? nil : $0.split(separator: ",", omittingEmptySubsequences: true).map(String.init) }
        try handOut(try engine.batchJSON(batchId: batch, taskIds: ids), to: out)
    }
}

@_cdecl("progress_task_logs_get")
public func progress_task_logs_get(_ handle: OpaquePointer?, _ taskId: UnsafePointer<CChar>?, _ since: Double,
                                   _ minLevel: CInt, _ out: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?)
    -> CInt {
    out?.pointee = nil
    return withEngine(handle) { engine in
        let id = try requiredString(taskId, "task_id")
        guard let level = LogLevel(rawValue: minLevel) else {
            throw EngineError.invalidArgument("min_level \(minLevel) is not a progress_log_level (0...3)")
        }
        guard !since.isNaN else { throw EngineError.range("since is NaN") }
        try handOut(try engine.logsJSON(id: id, since: since, minLevel: level), to: out)
    }
}

/// The name before the header's progress_<object>_<verb> rule; kept so that nothing linked against it breaks.
@_cdecl("progress_task_logs")
public func progress_task_logs(_ handle: OpaquePointer?, _ taskId: UnsafePointer<CChar>?, _ since: Double,
                               _ minLevel: CInt, _ out: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    progress_task_logs_get(handle, taskId, since, minLevel, out)
}

@_cdecl("progress_task_history_get")
public func progress_task_history_get(_ handle: OpaquePointer?, _ taskId: UnsafePointer<CChar>?,
                                      _ afterSeq: CLongLong, _ out: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?)
    -> CInt {
    out?.pointee = nil
    return withEngine(handle) { engine in
        let id = try requiredString(taskId, "task_id")
        guard afterSeq >= 0 else { throw EngineError.range("after_seq must be >= 0, got \(afterSeq)") }
        try handOut(try engine.historyJSON(id: id, afterSeq: UInt64(afterSeq)), to: out)
    }
}

/// The name before the header's progress_<object>_<verb> rule; kept so that nothing linked against it breaks.
@_cdecl("progress_task_history")
public func progress_task_history(_ handle: OpaquePointer?, _ taskId: UnsafePointer<CChar>?, _ afterSeq: CLongLong,
                                  _ out: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    progress_task_history_get(handle, taskId, afterSeq, out)
}

@_cdecl("progress_task_attach_counter")
public func progress_task_attach_counter(_ handle: OpaquePointer?, _ taskId: UnsafePointer<CChar>?,
                                         _ counter: UnsafePointer<CLongLong>?) -> CInt {
    withEngine(handle) { engine in
        let id = try requiredString(taskId, "task_id")
        guard let counter else { throw EngineError.invalidArgument("counter is NULL") }
        try engine.attachCounter(id: id, pointer: counter)
    }
}

@_cdecl("progress_task_detach_counter")
public func progress_task_detach_counter(_ handle: OpaquePointer?, _ taskId: UnsafePointer<CChar>?) -> CInt {
    withEngine(handle) { try $0.detachCounter(id: try requiredString(taskId, "task_id")) }
}

@_cdecl("progress_register_template_stages")
public func progress_register_template_stages(_ handle: OpaquePointer?, _ templateId: UnsafePointer<CChar>?,
                                              _ stagesJSON: UnsafePointer<CChar>?) -> CInt {
    withEngine(handle) { engine in
        try engine.registerTemplate(id: try requiredString(templateId, "template_id"),
                                    stagesJSON: try requiredString(stagesJSON, "stages_json"))
    }
}

@_cdecl("progress_eta_record_completion")
public func progress_eta_record_completion(_ handle: OpaquePointer?, _ recordJSON: UnsafePointer<CChar>?) -> CInt {
    withEngine(handle) { try $0.recordCompletion(json: try requiredString(recordJSON, "record_json")) }
}

@_cdecl("progress_eta_records_get")
public func progress_eta_records_get(_ handle: OpaquePointer?, _ templateId: UnsafePointer<CChar>?,
                                     _ quality: UnsafePointer<CChar>?,
                                     _ out: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    out?.pointee = nil
    return withEngine(handle) { engine in
        let template = try requiredString(templateId, "template_id")
        try handOut(engine.etaRecordsJSON(templateId: template, quality: try optionalString(quality, "quality")), to: out)
    }
}
