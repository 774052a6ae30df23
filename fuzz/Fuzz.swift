// libFuzzer entry point for every parser of outside input (see fuzz/README.md). Compiled by fuzz/build.sh into
// the ProgressEngine module itself, so internal APIs are reachable without @testable. The target is chosen by
// the environment variable PE_FUZZ_TARGET.
import CProgress
import Glibc

private enum FuzzTarget: String, CaseIterable {
    case json, config, event, apply, stages, completion, ws, rest, redis, png, deflate
}

private let target: FuzzTarget = {
    guard let name = getenv("PE_FUZZ_TARGET").map({ String(cString: $0) }), let t = FuzzTarget(rawValue: name) else {
        let known = FuzzTarget.allCases.map(\.rawValue).joined(separator: " ")
        fputs("set PE_FUZZ_TARGET to one of: \(known)\n", stderr)
        exit(2)
    }
    return t
}()

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTestOneInput(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let bytes = UnsafeBufferPointer(start: data, count: size)
    switch target {
    case .json: fuzzJSON(bytes)
    case .config: fuzzConfig(bytes)
    case .event: fuzzEvent(bytes)
    case .apply: fuzzApply(bytes)
    case .stages: fuzzStages(bytes)
    case .completion: fuzzCompletion(bytes)
    case .ws: fuzzWebSocket(bytes)
    case .rest: fuzzREST(bytes)
    case .redis: fuzzRedis(bytes)
    case .png: fuzzPNG(bytes)
    case .deflate: fuzzDeflate(bytes)
    }
    return 0
}

private func text(_ bytes: some Collection<UInt8>) -> String { String(decoding: bytes, as: UTF8.self) }

/// Splits at the first newline: (first line, rest or nil when there is no newline).
private func firstLine(_ bytes: UnsafeBufferPointer<UInt8>) -> (Slice<UnsafeBufferPointer<UInt8>>, Slice<UnsafeBufferPointer<UInt8>>?) {
    guard let nl = bytes.firstIndex(of: 10) else { return (bytes[...], nil) }
    return (bytes[..<nl], bytes[(nl + 1)...])
}

private func check(_ condition: Bool, _ message: @autoclosure () -> String) {
    if !condition {
        fputs("fuzz invariant broken: \(message())\n", stderr)
        abort()
    }
}

// MARK: - json: the parser every other input goes through

private func fuzzJSON(_ bytes: UnsafeBufferPointer<UInt8>) {
    guard let value = try? JSONParser.parse(bytes: bytes, context: "fuzz") else { return }
    // What the engine writes back must parse to the same value.
    let out = value.serialized()
    guard let again = try? JSONParser.parse(out, context: "fuzz round trip") else {
        check(false, "serialized value does not parse: \(out)")
        return
    }
    check(again == value, "round trip changed the value: \(out)")
    _ = try? JSONParser.parse(text(bytes), context: "fuzz")
}

// MARK: - config: config_json of progress_engine_create

private func fuzzConfig(_ bytes: UnsafeBufferPointer<UInt8>) {
    guard let config = try? EngineConfig.parse(text(bytes)) else { return }
    if let listen = config.listen { _ = try? ListenAddress.parse(listen) }
    if let url = config.redisURL { _ = try? RedisURL.parse(url) }
}

// MARK: - event: a runner's callback(event, data): the name on the first line, data_json after it

private func fuzzEvent(_ bytes: UnsafeBufferPointer<UInt8>) {
    let (name, data) = firstLine(bytes)
    if case let (.stage(stageName, stageData), _)? = try? RunnerEvent.parse(name: text(name), dataJSON: data.map(text)) {
        _ = try? RunnerEvent.stageArguments(name: stageName, data: stageData)
    }
    if let data { _ = try? TaskOptions.parse(text(data)) }
}

// MARK: - apply: a runner's task from options_json to its last event, applied to a fresh engine

private let applyPreviewDir: String = {
    let dir = "/tmp/pe-fuzz-apply-\(getpid())"
    mkdir(dir, 0o700)
    atexit { rmdir("/tmp/pe-fuzz-apply-\(getpid())") }
    return dir
}()

/// Line 1: options_json of progress_task_create (empty: none). Each further line (at most 32): an event name,
/// then a space and its data_json (no space: no data). Events naming a `preview_path` are skipped: they would
/// make the preview thread open whatever path the input names (the png target covers the decoding).
/// Afterwards the task's JSON, logs, history and batch must all be valid JSON.
private func fuzzApply(_ bytes: UnsafeBufferPointer<UInt8>) {
    let lines = bytes.split(separator: 10, maxSplits: 33, omittingEmptySubsequences: false).prefix(33)
    guard let first = lines.first, let options = try? TaskOptions.parse(text(first)) else { return }
    let engine: EngineCore
    do {
        let config = try EngineConfig.parse(#"{"preview_dir":"\#(applyPreviewDir)","retention_seconds":0}"#)
        engine = try EngineCore(config: config, clock: ManualClock(), background: false)
        try engine.registerTemplate(id: "tmpl", stagesJSON:
            #"[{"name":"load","weight":1},{"name":"denoise","weight":6},{"name":"decode","weight":1}]"#)
        try engine.createTask(id: "task", templateId: "tmpl", category: nil, options: options)
    } catch {
        return   // options the engine refuses (a bad timestamp): nothing to apply
    }
    defer { engine.close() }
    for line in lines.dropFirst() {
        let name: String, data: String?
        if let space = line.firstIndex(of: 32) {
            name = text(line[..<space])
            data = text(line[(space + 1)...])
        } else {
            name = text(line)
            data = nil
        }
        if data?.contains("preview_path") == true { continue }
        _ = try? engine.event(id: "task", name: name, dataJSON: data)
    }
    for (what, json) in [("task", try? engine.taskJSON(id: "task")),
                         ("logs", try? engine.logsJSON(id: "task", since: 0, minLevel: .debug)),
                         ("history", try? engine.historyJSON(id: "task", afterSeq: 0)),
                         ("batch", options.batchId.flatMap { try? engine.batchJSON(batchId: $0, taskIds: nil) }),
                         ("stats", engine.statsJSON())] {
        guard let json else {
            check(what == "batch", "no \(what) JSON for the task")
            continue
        }
        check((try? JSONParser.parse(json, context: what)) != nil, "\(what) JSON does not parse: \(json)")
    }
    engine.sweep(now: 4_000_000_000)
}

// MARK: - stages: stages_json of progress_register_template

private func fuzzStages(_ bytes: UnsafeBufferPointer<UInt8>) {
    guard let value = try? JSONParser.parse(bytes: bytes, context: "stages_json"),
          let stages = try? StageDefinition.parseList(value, context: "stages_json") else { return }
    check(!stages.isEmpty, "an accepted stage list is empty")
    let sum = stages.reduce(0.0) { $0 + $1.weight }
    check(stages.allSatisfy { $0.weight.isFinite && $0.weight >= 0 } && abs(sum - 1) < 1e-6,
          "accepted weights are not normalised: \(stages.map(\.weight))")
}

// MARK: - completion: record_json of progress_record_completion

private func fuzzCompletion(_ bytes: UnsafeBufferPointer<UInt8>) {
    guard let record = try? CompletionRecord.parse(text(bytes), now: 1_700_000_000) else { return }
    let history = CompletionHistory()
    history.add(record)
}

// MARK: - ws and rest: the listener's callbacks on an engine holding a few tasks

private let previewDir = "/tmp/pe-fuzz-previews-\(getpid())"

private let fuzzEngine: EngineCore = {
    let dir = previewDir
    mkdir(dir, 0o700)
    atexit {
        unlink(previewDir + "/t1-1-50.png")
        rmdir(previewDir)
    }
    // A preview file the REST target can fetch by name.
    if let f = fopen(dir + "/t1-1-50.png", "wb") {
        let png: [UInt8] = [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]
        fwrite(png, 1, png.count, f)
        fclose(f)
    }
    do {
        let config = try EngineConfig.parse(#"{"listen":"127.0.0.1:0","auth_token":"fuzz","preview_dir":"\#(dir)","max_subscriptions":8,"allowed_origins":["http://ok.example"]}"#)
        let engine = try EngineCore(config: config, background: false)
        try engine.registerTemplate(id: "tmpl", stagesJSON: #"[{"name":"load","weight":1},{"name":"run","weight":3}]"#)
        for (id, batch) in [("t1", "b1"), ("t2", "b1"), ("t3", nil)] {
            var options = TaskOptions()
            options.batchId = batch
            try engine.createTask(id: id, templateId: "tmpl", category: "image_generation", options: options)
            try engine.event(id: id, name: "execution_progress", dataJSON: #"{"step":3,"total_steps":10,"message":"m"}"#)
            try engine.event(id: id, name: "log", dataJSON: #"{"level":"warning","message":"w"}"#)
            try engine.event(id: id, name: "run", dataJSON: #"{"progress":0.5}"#)
        }
        try engine.complete(id: "t3")
        check(FuzzStub_has_listener() != 0, "the stub listener was not created")
        return engine
    } catch {
        fputs("fuzz engine setup failed: \(error)\n", stderr)
        abort()
    }
}()

/// WebSocket: the first line is the handshake's query ("name=value" pairs separated by '&'), then optionally a
/// tab and the Origin header; the rest is client messages separated by NUL bytes; each is handled, and the
/// queue drained, like the listener does.
private func fuzzWebSocket(_ bytes: UnsafeBufferPointer<UInt8>) {
    _ = fuzzEngine
    let (handshake, rest) = firstLine(bytes)
    let tab = handshake.firstIndex(of: 9)
    var query = Array(handshake[..<(tab ?? handshake.endIndex)].map { $0 == UInt8(ascii: "&") ? 0 : $0 })
    query.append(0)
    let origin = tab.map { handshake[($0 + 1)...].prefix { $0 != 0 }.map { CChar(bitPattern: $0) } + [0] } ?? [0]
    let id = query.withUnsafeBufferPointer { q in
        q.withMemoryRebound(to: CChar.self) { FuzzStub_ws_open(Routes.webSocketPath, $0.baseAddress, $0.count, "", origin) }
    }
    check(id != 0, "the listener refused a connection id")
    FuzzStub_ws_drain(id)
    if let rest {
        for message in rest.split(separator: 0, maxSplits: 16, omittingEmptySubsequences: false) {
            // A copy of exactly the message's size, so ASan sees any read past its end.
            let copy = message.map { CChar(bitPattern: $0) }
            copy.withUnsafeBufferPointer { FuzzStub_ws_message(id, $0.baseAddress, $0.count, 0) }
            FuzzStub_ws_drain(id)
        }
    }
    FuzzStub_ws_close(id)
}

/// REST: "METHOD\nPATH\nAUTHORIZATION[\tORIGIN]\nQUERY" where QUERY is the decoded arguments as libwebsockets hands
/// them over ("name=value" pairs, NUL-terminated one after the other); for a POST the last part is its body instead
/// (the listener reads the bodies of POSTs only). Missing lines are empty; so is the Origin header without a tab.
private func fuzzREST(_ bytes: UnsafeBufferPointer<UInt8>) {
    _ = fuzzEngine
    var parts: [[UInt8]] = []
    var rest = bytes[...]
    for _ in 0..<3 {
        guard let nl = rest.firstIndex(of: 10) else { break }
        parts.append(Array(rest[..<nl]))
        rest = rest[(nl + 1)...]
    }
    parts.append(Array(rest))
    while parts.count < 4 { parts.append([]) }
    // C strings end at the first NUL, as they would coming from libwebsockets.
    func cString(_ b: [UInt8]) -> [CChar] { b.prefix { $0 != 0 }.map { CChar(bitPattern: $0) } + [0] }
    let tab = parts[2].firstIndex(of: 9)
    let method = cString(parts[0]), path = cString(parts[1]), auth = cString(Array(parts[2][..<(tab ?? parts[2].endIndex)]))
    let origin = cString(tab.map { Array(parts[2][($0 + 1)...]) } ?? [])
    let isPost = parts[0] == Array("POST".utf8)
    let query = isPost ? [] : parts[3].map { CChar(bitPattern: $0) }
    // A copy of exactly the body's size, so ASan sees any read past its end.
    let body = isPost ? parts[3].map { CChar(bitPattern: $0) } : []
    query.withUnsafeBufferPointer { q in
        body.withUnsafeBufferPointer { b in
            FuzzStub_http(method, path, q.baseAddress, q.count, auth, origin, isPost ? b.baseAddress : nil, b.count)
        }
    }
    // Since values and stored times go through ISO8601.parse; it must not trap on any text either.
    _ = ISO8601.parse(text(parts[3]))
}

// MARK: - redis: what another engine (or anyone with access to Redis) left there, and redis_url

private func fuzzRedis(_ bytes: UnsafeBufferPointer<UInt8>) {
    guard let kind = bytes.first else { return }
    let body = text(bytes.dropFirst())
    switch kind % 5 {
    case 0:
        _ = try? RedisURL.parse(body)
    case 1:
        // A stored task is rebuilt into a live record and served as JSON, as on recovery.
        guard let stored = try? StoredTask.parse(body) else { return }
        let record = TaskRecord(restoring: stored)
        var w = JSONWriter()
        TaskJSON.write(TaskSnapshot(record), to: &w)
        check((try? JSONParser.parse(w.output, context: "task json")) != nil, "restored task's JSON does not parse")
    case 2:
        guard let value = try? JSONParser.parse(body, context: "event") else { return }
        _ = try? StoredEvents.parseEvent(value)
        _ = try? StoredEvents.parseEvents(value)
    case 3:
        guard let value = try? JSONParser.parse(body, context: "log") else { return }
        _ = try? StoredEvents.parseLog(value)
    default:
        _ = try? ListenAddress.parse(body)
    }
}

// MARK: - png: a PNG file given as preview_path, decoded and downscaled as the preview worker does

private let pngPath = "/tmp/pe-fuzz-\(getpid()).png"

private let pngCleanup: Void = { atexit { unlink(pngPath) } }()

private func fuzzPNG(_ bytes: UnsafeBufferPointer<UInt8>) {
    _ = pngCleanup
    guard let f = fopen(pngPath, "wb") else { abort() }
    if bytes.count > 0 { fwrite(bytes.baseAddress, 1, bytes.count, f) }
    fclose(f)
    var decoded: UnsafeMutablePointer<UInt8>?
    var w: Int32 = 0, h: Int32 = 0, c: Int32 = 0
    var err = [CChar](repeating: 0, count: 512)
    // Smaller than PreviewWorker.maxSourcePixels (64 Mi) so that one input cannot take seconds; the code path is
    // the same.
    guard CProgress_png_read(pngPath, 1 << 20, &decoded, &w, &h, &c, &err, err.count) == 0, let decoded else { return }
    defer { free(decoded) }
    check(w > 0 && h > 0 && [1, 3, 4].contains(c), "decoded \(w)x\(h)x\(c)")
    let maxSize = 64
    let scale = min(1.0, Double(maxSize) / Double(max(w, h)))
    let outW = max(1, Int((Double(w) * scale).rounded())), outH = max(1, Int((Double(h) * scale).rounded()))
    let small = UnsafeMutablePointer<UInt8>.allocate(capacity: outW * outH * Int(c))
    defer { small.deallocate() }
    CProgress_downscale(decoded, w, h, Int(w) * Int(c), c, small, Int32(outW), Int32(outH))
}

// MARK: - deflate: the per-client permessage-deflate encoder against a real inflater

/// The input split at 0xFE into messages, each compressed for one client through its window
/// (`CProgress_window_deflate`) and inflated by zlib with the window kept, as the client does; a message starting
/// with 0xFD is first "sent" outside the window (`CProgress_window_forget`). Invariant: every message inflates to
/// itself. The encoder's input is the listener's own output, but its back-references are what a client trusts.
private func fuzzDeflate(_ bytes: UnsafeBufferPointer<UInt8>) {
    guard let window = CProgress_window_create() else { return }
    defer { CProgress_window_destroy(window) }
    FuzzStub_inflate_reset()
    var out = [UInt8](repeating: 0, count: CProgress_window_bound(Int(CPROGRESS_WINDOW_MESSAGE_MAX)))
    for part in bytes.split(separator: 0xFE, omittingEmptySubsequences: true) {
        var message = Array(part.prefix(Int(CPROGRESS_WINDOW_MESSAGE_MAX)))
        if message.first == 0xFD {
            CProgress_window_forget(window)
            message.removeFirst()
            if message.isEmpty { continue }
        }
        let n = message.withUnsafeBufferPointer { m in
            out.withUnsafeMutableBufferPointer { o in
                CProgress_window_deflate(window, m.baseAddress, m.count, o.baseAddress, o.count)
            }
        }
        check(n > 0, "a message of \(message.count) bytes did not compress")
        let same = out.withUnsafeBufferPointer { o in
            message.withUnsafeBufferPointer { m in FuzzStub_inflate_matches(o.baseAddress, Int(n), m.baseAddress, m.count) }
        }
        check(same == 1, "a message of \(message.count) bytes did not inflate to itself")
    }
}
