/// Builds compact JSON text. Callers write members in order; the writer inserts commas and escapes strings
/// so that any id or message (quotes, control characters, `</script>`) stays inert in JSON and in HTML.
struct JSONWriter {
    private(set) var bytes: [UInt8] = []
    private var needsComma = false

    init(capacity: Int = 256) {
        bytes.reserveCapacity(capacity)
    }

    var output: String { String(decoding: bytes, as: UTF8.self) }

    private mutating func separate() {
        if needsComma { bytes.append(UInt8(ascii: ",")) }
        needsComma = true
    }

    mutating func beginObject() {
        separate()
        bytes.append(UInt8(ascii: "{"))
        needsComma = false
    }

    mutating func endObject() {
        bytes.append(UInt8(ascii: "}"))
        needsComma = true
    }

    mutating func beginArray() {
        separate()
        bytes.append(UInt8(ascii: "["))
        needsComma = false
    }

    mutating func endArray() {
        bytes.append(UInt8(ascii: "]"))
        needsComma = true
    }

    /// Writes `"name":`; the next value call writes the member's value.
    mutating func key(_ name: String) {
        separate()
        appendQuoted(name)
        bytes.append(UInt8(ascii: ":"))
        needsComma = false
    }

    mutating func string(_ s: String?) {
        separate()
        if let s { appendQuoted(s) } else { appendRaw("null") }
    }

    /// A finite number; NaN and infinities become null (JSON has no spelling for them).
    mutating func number(_ d: Double?) {
        separate()
        guard let d, d.isFinite else { return appendRaw("null") }
        appendRaw(d.description)
    }

    mutating func integer<T: BinaryInteger>(_ i: T?) {
        separate()
        guard let i else { return appendRaw("null") }
        appendRaw(String(i))
    }

    mutating func bool(_ b: Bool?) {
        separate()
        guard let b else { return appendRaw("null") }
        appendRaw(b ? "true" : "false")
    }

    mutating func null() {
        separate()
        appendRaw("null")
    }

    /// An epoch time as ISO-8601 UTC with milliseconds and "Z", or null.
    mutating func timestamp(_ epoch: Double?) {
        guard let epoch else { return null() }
        separate()
        bytes.append(UInt8(ascii: "\""))
        ISO8601.write(epoch, into: &bytes) // digits, '-', 'T', ':', '.', 'Z': nothing to escape
        bytes.append(UInt8(ascii: "\""))
    }

    /// A complete JSON value another writer built (or stored JSON text), copied as it is: never parsed again.
    /// The caller vouches that it is one well-formed value.
    mutating func raw<Bytes: Collection>(_ json: Bytes) where Bytes.Element == UInt8 {
        separate()
        bytes.append(contentsOf: json)
    }

    mutating func value(_ v: JSONValue) {
        switch v {
        case .null: null()
        case let .bool(b): bool(b)
        case let .number(n): number(n)
        case let .string(s): string(s)
        case let .array(elements):
            beginArray()
            for e in elements { value(e) }
            endArray()
        case let .object(members):
            beginObject()
            for (k, e) in members {
                key(k)
                value(e)
            }
            endObject()
        }
    }

    private mutating func appendRaw(_ s: String) {
        bytes.append(contentsOf: s.utf8)
    }

    private static let hex: [UInt8] = Array("0123456789abcdef".utf8)

    /// Bytes that cannot stand for themselves in our JSON: the quote, the backslash, control characters and
    /// DEL, and `<`, `>`, `&`, escaped so that JSON embedded in a page can never close a <script> element.
    @inline(__always)
    private static func needsEscape(_ byte: UInt8) -> Bool {
        byte < 0x20 || byte == 0x22 || byte == 0x5c || byte == 0x3c || byte == 0x3e || byte == 0x26 || byte == 0x7f
    }

    /// The string in quotes; runs of bytes that need no escape are copied whole (the common case: the
    /// whole string), the others written as `\"`, `\\`, `\n`, `\r`, `\t` or `\u00XX`.
    private mutating func appendQuoted(_ s: String) {
        bytes.append(UInt8(ascii: "\""))
        var s = s
        s.withUTF8 { utf8 in
            var run = 0
            for i in utf8.indices where JSONWriter.needsEscape(utf8[i]) {
                if run < i { bytes.append(contentsOf: UnsafeBufferPointer(rebasing: utf8[run..<i])) }
                appendEscaped(utf8[i])
                run = i + 1
            }
            if run < utf8.count { bytes.append(contentsOf: UnsafeBufferPointer(rebasing: utf8[run...])) }
        }
        bytes.append(UInt8(ascii: "\""))
    }

    private mutating func appendEscaped(_ byte: UInt8) {
        switch byte {
        case UInt8(ascii: "\""): bytes.append(contentsOf: [0x5c, 0x22])
        case UInt8(ascii: "\\"): bytes.append(contentsOf: [0x5c, 0x5c])
        case 0x0a: bytes.append(contentsOf: [0x5c, UInt8(ascii: "n")])
        case 0x0d: bytes.append(contentsOf: [0x5c, UInt8(ascii: "r")])
        case 0x09: bytes.append(contentsOf: [0x5c, UInt8(ascii: "t")])
        default:
            bytes.append(contentsOf: [0x5c, UInt8(ascii: "u"), UInt8(ascii: "0"), UInt8(ascii: "0"),
                                      JSONWriter.hex[Int(byte >> 4)], JSONWriter.hex[Int(byte & 0xf)]])
        }
    }
}

/// ISO-8601 formatting of epoch seconds without Foundation (the library links only the Swift runtime).
enum ISO8601 {
    /// The range ISO-8601's four-digit years can show: 0000-01-01T00:00:00.000Z ... 9999-12-31T23:59:59.999Z.
    static let formattableEpochs = -62_167_219_200.0 ... 253_402_300_799.999

    /// "2026-11-29T17:43:22.123Z" for any epoch time. Times outside `formattableEpochs` (a runner may pass any
    /// finite timestamp) are shown as its nearest end rather than trapping on the conversion to Int64; NaN as
    /// the epoch.
    static func format(_ epoch: Double) -> String {
        var text: [UInt8] = []
        text.reserveCapacity(24)
        write(epoch, into: &text)
        return String(decoding: text, as: UTF8.self)
    }

    /// `format`'s text appended to `out` (JSONWriter writes timestamps with it, without a String between).
    static func write(_ epoch: Double, into out: inout [UInt8]) {
        let clamped = epoch.isNaN ? 0 : min(max(epoch, formattableEpochs.lowerBound), formattableEpochs.upperBound)
        let totalMillis = Int64((clamped * 1000).rounded(.down))
        var days = totalMillis >= 0 ? totalMillis / 86_400_000 : (totalMillis - 86_399_999) / 86_400_000
        let msOfDay = totalMillis - days * 86_400_000
        // Civil-from-days (H. Hinnant's algorithm), valid for the proleptic Gregorian calendar.
        days += 719_468
        let era = (days >= 0 ? days : days - 146_096) / 146_097
        let doe = days - era * 146_097
        let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let day = doy - (153 * mp + 2) / 5 + 1
        let month = mp < 10 ? mp + 3 : mp - 9
        let year = yoe + era * 400 + (month <= 2 ? 1 : 0)
        let hour = msOfDay / 3_600_000, minute = msOfDay / 60_000 % 60, second = msOfDay / 1000 % 60
        let millis = msOfDay % 1000
        // The clamp keeps every field within its width (years 0...9999).
        func field(_ value: Int64, _ width: Int, then separator: Unicode.Scalar) {
            var divisor: Int64 = 1
            for _ in 1..<width { divisor *= 10 }
            while divisor > 0 {
                out.append(UInt8(ascii: "0") + UInt8(value / divisor % 10))
                divisor /= 10
            }
            out.append(UInt8(ascii: separator))
        }
        field(year, 4, then: "-")
        field(month, 2, then: "-")
        field(day, 2, then: "T")
        field(hour, 2, then: ":")
        field(minute, 2, then: ":")
        field(second, 2, then: ".")
        field(millis, 3, then: "Z")
    }

    /// Parses "2024-01-15", "2024-01-15T10:30:00", with optional fraction and "Z" or "±HH:MM" (default UTC).
    /// - Returns: epoch seconds, or nil if the text is not such a date.
    static func parse(_ text: String) -> Double? {
        let b = Array(text.utf8)
        func digits(_ at: Int, _ count: Int) -> Int? {
            guard at + count <= b.count else { return nil }
            var v = 0
            for i in at..<(at + count) {
                guard (48...57).contains(b[i]) else { return nil }
                v = v * 10 + Int(b[i] - 48)
            }
            return v
        }
        guard let year = digits(0, 4), b.count >= 10, b[4] == 45, let month = digits(5, 2), b[7] == 45,
              let day = digits(8, 2), (1...12).contains(month), (1...31).contains(day) else { return nil }
        var seconds = 0.0
        var i = 10
        if i < b.count {
            guard b[i] == 84 || b[i] == 32, let h = digits(i + 1, 2), b.count > i + 3, b[i + 3] == 58,
                  let m = digits(i + 4, 2), h < 24, m < 60 else { return nil }
            seconds = Double(h * 3600 + m * 60)
            i += 6
            if i < b.count, b[i] == 58 {
                guard let s = digits(i + 1, 2), s < 61 else { return nil }
                seconds += Double(s)
                i += 3
                if i < b.count, b[i] == 46 {
                    var scale = 0.1
                    i += 1
                    let start = i
                    while i < b.count, (48...57).contains(b[i]) {
                        seconds += Double(b[i] - 48) * scale
                        scale /= 10
                        i += 1
                    }
                    guard i > start else { return nil }
                }
            }
            if i < b.count {
                if b[i] == 90 {
                    i += 1
                } else if b[i] == 43 || b[i] == 45, let oh = digits(i + 1, 2), b.count >= i + 6, b[i + 3] == 58,
                          let om = digits(i + 4, 2) {
                    let offset = Double(oh * 3600 + om * 60)
                    seconds -= b[i] == 43 ? offset : -offset
                    i += 6
                } else {
                    return nil
                }
            }
            guard i == b.count else { return nil }
        }
        // Days from civil (H. Hinnant), the inverse of `format`.
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yoe = y - era * 400
        let mp = (month + 9) % 12
        let doy = (153 * mp + 2) / 5 + day - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        let days = era * 146_097 + doe - 719_468
        return Double(days) * 86_400 + seconds
    }
}
