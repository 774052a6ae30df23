import CProgress
import Synchronization

/// The engine's log lines on standard error, one per incident (never per update): a JSON object per line, or
/// text for `progress-server --log-format text` (`Engine.logFormat`). The C code's lines (listener.c) come here
/// too, through `CProgress_log_event`, so every line of the engine has one form. Any thread may write; a line
/// never blocks (CProgress_log_line drops and counts it when stderr is full, and the next line written says so).
enum EngineLog {
    enum Level: String {
        case info, warning, error
    }

    /// Text lines rather than JSON, for the whole process.
    static let text = Atomic<Bool>(false)

    /// Routes listener.c's lines here; evaluated once, by the first engine opened.
    static let takesCLines: Void = {
        CProgress_set_log_sink { level, event, message in
            EngineLog.write(level.flatMap { Level(rawValue: String(cString: $0)) } ?? .error,
                            event.map { String(cString: $0) } ?? "listener",
                            [("message", message.map { String(cString: $0) } ?? "")], component: "listener")
        }
    }()

    static func write(_ level: Level, _ event: String, _ fields: [(String, String)], component: String = "engine") {
        let dropped = CProgress_log_dropped()
        if dropped > 0 {
            let note = line(.warning, "log_lines_dropped", [
                ("count", String(dropped)),
                ("message", "\(dropped) log line(s) dropped: standard error was full and not being read"),
            ], component: "engine")
            note.withUnsafeBufferPointer { buf in
                buf.withMemoryRebound(to: CChar.self) { CProgress_log_note($0.baseAddress, $0.count, dropped) }
            }
        }
        let bytes = line(level, event, fields, component: component)
        bytes.withUnsafeBufferPointer { buf in
            buf.withMemoryRebound(to: CChar.self) { CProgress_log_line($0.baseAddress, $0.count) }
        }
    }

    /// One line, newline included.
    static func line(_ level: Level, _ event: String, _ fields: [(String, String)], component: String) -> [UInt8] {
        let now = SystemClock().now()
        guard text.load(ordering: .relaxed) else {
            var w = JSONWriter()
            w.beginObject()
            w.key("ts"); w.timestamp(now)
            w.key("level"); w.string(level.rawValue)
            w.key("component"); w.string(component)
            w.key("event"); w.string(event)
            for (k, v) in fields {
                w.key(k); w.string(v)
            }
            w.endObject()
            return w.bytes + [UInt8(ascii: "\n")]
        }
        // swift-log's StreamLogHandler form, which progress-server's own text lines have:
        // `TIME LEVEL LABEL: KEY=VALUE … [SOURCE] MESSAGE`, a value quoted as JSON where it is empty or has a blank,
        // a quote, an '=' or a control character.
        var out: [UInt8] = []
        out.reserveCapacity(256)
        ISO8601.write(now, into: &out)
        out += Array(" \(level.rawValue) progress-engine: component=\(component)".utf8)
        for (k, v) in fields {
            out += Array(" \(k)=".utf8)
            if v.isEmpty || v.utf8.contains(where: { $0 <= 0x20 || $0 == UInt8(ascii: "\"") || $0 == UInt8(ascii: "=") }) {
                var w = JSONWriter()
                w.string(v)
                out += w.bytes
            } else {
                out += Array(v.utf8)
            }
        }
        out += Array(" [ProgressEngine] \(event)\n".utf8)
        return out
    }
}
