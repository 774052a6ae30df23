/// A strict RFC 8259 JSON parser over UTF-8 bytes. It parses outside input (configuration, runner events),
/// so it bounds nesting depth, rejects trailing garbage, lone surrogates and raw control characters, and
/// never traps on any input.
struct JSONParser {
    /// Deeper documents are rejected; the engine's own documents are at most four levels deep.
    static let maxDepth = 64

    private let bytes: UnsafeBufferPointer<UInt8>
    private var index = 0

    private init(bytes: UnsafeBufferPointer<UInt8>) {
        self.bytes = bytes
    }

    /// Parses one JSON document.
    /// - Parameters:
    ///   - text: the document.
    ///   - context: what the document is, for error messages ("config_json").
    /// - Throws: `EngineError.json` with the byte offset and what was expected.
    static func parse(_ text: String, context: String) throws -> JSONValue {
        var copy = text
        return try copy.withUTF8 { try parse(bytes: $0, context: context) }
    }

    static func parse(bytes: UnsafeBufferPointer<UInt8>, context: String) throws -> JSONValue {
        var parser = JSONParser(bytes: bytes)
        do {
            parser.skipWhitespace()
            let value = try parser.parseValue(depth: 0)
            parser.skipWhitespace()
            guard parser.index == bytes.count else { throw parser.failure("end of document") }
            return value
        } catch let failure as Failure {
            throw EngineError.json("malformed JSON in \(context): \(failure.message)")
        }
    }

    private struct Failure: Error {
        let message: String
    }

    private func failure(_ expected: String) -> Failure {
        if index >= bytes.count {
            return Failure(message: "expected \(expected) at offset \(index), found end of input")
        }
        let byte = bytes[index]
        let shown = (0x20..<0x7f).contains(byte) ? "'\(Character(Unicode.Scalar(byte)))'" : "byte 0x\(String(byte, radix: 16))"
        return Failure(message: "expected \(expected) at offset \(index), found \(shown)")
    }

    private var current: UInt8? { index < bytes.count ? bytes[index] : nil }

    private mutating func skipWhitespace() {
        while index < bytes.count {
            switch bytes[index] {
            case 0x20, 0x09, 0x0a, 0x0d: index += 1
            default: return
            }
        }
    }

    private mutating func parseValue(depth: Int) throws -> JSONValue {
        guard depth < JSONParser.maxDepth else {
            throw Failure(message: "nesting deeper than \(JSONParser.maxDepth) levels at offset \(index)")
        }
        guard let byte = current else { throw failure("a value") }
        switch byte {
        case UInt8(ascii: "{"): return try parseObject(depth: depth)
        case UInt8(ascii: "["): return try parseArray(depth: depth)
        case UInt8(ascii: "\""): return .string(try parseString())
        case UInt8(ascii: "t"): try expectLiteral("true"); return .bool(true)
        case UInt8(ascii: "f"): try expectLiteral("false"); return .bool(false)
        case UInt8(ascii: "n"): try expectLiteral("null"); return .null
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return .number(try parseNumber())
        default: throw failure("a value")
        }
    }

    private mutating func expectLiteral(_ literal: StaticString) throws {
        let start = index
        for expected in UnsafeBufferPointer(start: literal.utf8Start, count: literal.utf8CodeUnitCount) {
            guard current == expected else {
                index = start
                throw failure("'\(literal)'")
            }
            index += 1
        }
    }

    private mutating func parseObject(depth: Int) throws -> JSONValue {
        index += 1
        var members: [(String, JSONValue)] = []
        skipWhitespace()
        if current == UInt8(ascii: "}") {
            index += 1
            return .object(members)
        }
        while true {
            skipWhitespace()
            guard current == UInt8(ascii: "\"") else { throw failure("a string key") }
            let key = try parseString()
            skipWhitespace()
            guard current == UInt8(ascii: ":") else { throw failure("':'") }
            index += 1
            skipWhitespace()
            members.append((key, try parseValue(depth: depth + 1)))
            skipWhitespace()
            switch current {
            case UInt8(ascii: ","): index += 1
            case UInt8(ascii: "}"): index += 1; return .object(members)
            default: throw failure("',' or '}'")
            }
        }
    }

    private mutating func parseArray(depth: Int) throws -> JSONValue {
        index += 1
        var elements: [JSONValue] = []
        skipWhitespace()
        if current == UInt8(ascii: "]") {
            index += 1
            return .array(elements)
        }
        while true {
            skipWhitespace()
            elements.append(try parseValue(depth: depth + 1))
            skipWhitespace()
            switch current {
            case UInt8(ascii: ","): index += 1
            case UInt8(ascii: "]"): index += 1; return .array(elements)
            default: throw failure("',' or ']'")
            }
        }
    }

    private mutating func parseString() throws -> String {
        index += 1
        var out: [UInt8] = []
        while true {
            guard let byte = current else { throw failure("closing '\"'") }
            switch byte {
            case UInt8(ascii: "\""):
                index += 1
                guard let s = String(validating: out, as: UTF8.self) else {
                    throw Failure(message: "string ending at offset \(index) is not valid UTF-8")
                }
                return s
            case UInt8(ascii: "\\"):
                index += 1
                try parseEscape(into: &out)
            case 0..<0x20:
                throw failure("no raw control character in a string (escape it)")
            default:
                out.append(byte)
                index += 1
            }
        }
    }

    private mutating func parseEscape(into out: inout [UInt8]) throws {
        guard let byte = current else { throw failure("an escape character") }
        index += 1
        switch byte {
        case UInt8(ascii: "\""): out.append(0x22)
        case UInt8(ascii: "\\"): out.append(0x5c)
        case UInt8(ascii: "/"): out.append(0x2f)
        case UInt8(ascii: "b"): out.append(0x08)
        case UInt8(ascii: "f"): out.append(0x0c)
        case UInt8(ascii: "n"): out.append(0x0a)
        case UInt8(ascii: "r"): out.append(0x0d)
        case UInt8(ascii: "t"): out.append(0x09)
        case UInt8(ascii: "u"):
            var scalar = try parseHex4()
            if (0xd800..<0xdc00).contains(scalar) {
                guard current == UInt8(ascii: "\\"), index + 1 < bytes.count, bytes[index + 1] == UInt8(ascii: "u")
                else { throw failure("a low surrogate escape after a high surrogate") }
                index += 2
                let low = try parseHex4()
                guard (0xdc00..<0xe000).contains(low) else { throw failure("a low surrogate (\\uDC00-\\uDFFF)") }
                scalar = 0x10000 + ((scalar - 0xd800) << 10) + (low - 0xdc00)
            } else if (0xdc00..<0xe000).contains(scalar) {
                throw Failure(message: "lone low surrogate at offset \(index - 6)")
            }
            guard let unicode = Unicode.Scalar(scalar) else { throw failure("a valid code point") }
            out.append(contentsOf: UTF8.encode(unicode)!)
        default:
            index -= 1
            throw failure("a valid escape (\\\" \\\\ \\/ \\b \\f \\n \\r \\t \\uXXXX)")
        }
    }

    private mutating func parseHex4() throws -> UInt32 {
        var value: UInt32 = 0
        for _ in 0..<4 {
            guard let byte = current else { throw failure("4 hex digits") }
            let digit: UInt32
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = UInt32(byte - UInt8(ascii: "0"))
            case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = UInt32(byte - UInt8(ascii: "a") + 10)
            case UInt8(ascii: "A")...UInt8(ascii: "F"): digit = UInt32(byte - UInt8(ascii: "A") + 10)
            default: throw failure("a hex digit")
            }
            value = value << 4 | digit
            index += 1
        }
        return value
    }

    private mutating func parseNumber() throws -> Double {
        let start = index
        if current == UInt8(ascii: "-") { index += 1 }
        guard let first = current, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(first) else {
            throw failure("a digit")
        }
        if first == UInt8(ascii: "0") {
            index += 1
        } else {
            skipDigits()
        }
        if current == UInt8(ascii: ".") {
            index += 1
            guard let d = current, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(d) else {
                throw failure("a digit after '.'")
            }
            skipDigits()
        }
        if current == UInt8(ascii: "e") || current == UInt8(ascii: "E") {
            index += 1
            if current == UInt8(ascii: "+") || current == UInt8(ascii: "-") { index += 1 }
            guard let d = current, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(d) else {
                throw failure("a digit in the exponent")
            }
            skipDigits()
        }
        let text = String(decoding: UnsafeBufferPointer(rebasing: bytes[start..<index]), as: UTF8.self)
        guard let value = Double(text), value.isFinite else {
            throw Failure(message: "number \(text) at offset \(start) is out of range")
        }
        return value
    }

    private mutating func skipDigits() {
        while let d = current, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(d) { index += 1 }
    }
}
