import Glibc
import Logging

/// A swift-log handler that writes one JSON object per line on standard error, the server's default format:
/// `{"level":"info","event":"listening","config":"…","port":8000}`. The message is the event's name; metadata
/// becomes the other fields, sorted, integers as JSON numbers. One `write` per line, so lines of concurrent
/// loggers never interleave.
struct JSONLogHandler: LogHandler {
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .info

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var fields = metadata
        if let extra = event.metadata { fields.merge(extra) { $1 } }
        var text = "{\"level\":\(JSONLogHandler.quoted(event.level.rawValue)),"
            + "\"event\":\(JSONLogHandler.quoted(event.message.description))"
        for (key, value) in fields.sorted(by: { $0.key < $1.key }) {
            text += ",\(JSONLogHandler.quoted(key)):\(JSONLogHandler.json(value))"
        }
        text += "}\n"
        _ = text.withCString { write(STDERR_FILENO, $0, strlen($0)) }
    }

    private static func json(_ value: Logger.Metadata.Value) -> String {
        switch value {
        case .string(let s): return quoted(s)
        case .stringConvertible(let v) where v is any BinaryInteger: return v.description
        case .stringConvertible(let v): return quoted(v.description)
        case .array(let values): return "[" + values.map(json).joined(separator: ",") + "]"
        case .dictionary(let d):
            return "{" + d.sorted { $0.key < $1.key }.map { "\(quoted($0.key)):\(json($0.value))" }
                .joined(separator: ",") + "}"
        }
    }

    static func quoted(_ s: String) -> String {
        var out = "\""
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case _ where scalar.value < 0x20:
                let hex = String(scalar.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }
}
