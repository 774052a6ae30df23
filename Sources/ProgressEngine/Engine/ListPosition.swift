/// Where a task stands in the task listing's order: newest `created_at` first, ties broken by task id in
/// descending byte order. Creation time and id never change, so a task keeps its place while others are created,
/// updated or expire: paging with a position as the cursor neither repeats nor skips a task.
///
/// The same order is spelled as bytes (`sortKey`: the time as 16 hex digits of an order-preserving form of its
/// bits, then the id's UTF-8), which is what Redis' creation index holds and what a cursor carries: descending
/// byte order of sort keys is the listing's order, so Redis walks the index with `ZREVRANGEBYLEX` alone.
struct ListPosition: Comparable, Hashable, Sendable {
    let createdAt: Double
    let id: String

    /// - Parameter createdAt: finite; -0 counts as 0 (their bit patterns differ, their times do not).
    init(createdAt: Double, id: String) {
        self.createdAt = createdAt == 0 ? 0 : createdAt
        self.id = id
    }

    /// The same time and the same id's bytes, as `<` orders them (String's own `==` joins canonical equivalents).
    static func == (a: ListPosition, b: ListPosition) -> Bool {
        a.createdAt == b.createdAt && IdKey.same(a.id, b.id)
    }

    func hash(into hasher: inout Hasher) {
        hasher.combine(createdAt)
        hasher.combine(IdKey(id))
    }

    /// Whether `a` comes before `b` in the listing (is newer, or as new with a greater id).
    static func < (a: ListPosition, b: ListPosition) -> Bool {
        if a.createdAt != b.createdAt { return a.createdAt > b.createdAt }
        return b.id.utf8.lexicographicallyPrecedes(a.id.utf8)
    }

    /// The time's IEEE 754 bits, turned so that unsigned order is numeric order: a positive time gets its sign bit
    /// set, a negative one all its bits flipped.
    private static func orderedBits(_ t: Double) -> UInt64 {
        let bits = t.bitPattern
        return bits & (1 << 63) == 0 ? bits | (1 << 63) : ~bits
    }

    private static func time(orderedBits bits: UInt64) -> Double {
        Double(bitPattern: bits & (1 << 63) != 0 ? bits & ~(1 << 63) : ~bits)
    }

    private static let hexDigits = Array("0123456789abcdef".utf8)

    /// 16 lowercase hex digits of the ordered time, then the id.
    var sortKey: [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(16 + id.utf8.count)
        let bits = ListPosition.orderedBits(createdAt)
        for shift in stride(from: 60, through: 0, by: -4) { out.append(ListPosition.hexDigits[Int(bits >> UInt64(shift) & 0xF)]) }
        out.append(contentsOf: id.utf8)
        return out
    }

    /// Reads a sort key back; nil unless it is 16 lowercase hex digits of a finite time and a valid task id.
    init?<Bytes: Collection>(sortKey: Bytes) where Bytes.Element == UInt8 {
        guard sortKey.count > 16 else { return nil }
        var bits: UInt64 = 0
        for byte in sortKey.prefix(16) {
            guard let digit = ListPosition.hexDigits.firstIndex(of: byte) else { return nil }
            bits = bits << 4 | UInt64(digit)
        }
        let time = ListPosition.time(orderedBits: bits)
        guard time.isFinite, let id = String(validating: sortKey.dropFirst(16), as: UTF8.self), EngineCore.isValidId(id)
        else { return nil }
        self.init(createdAt: time, id: id)
    }

    // MARK: - Cursor

    /// The cursor's format, its first byte: a later format can tell an older cursor from its own.
    private static let cursorVersion = UInt8(ascii: "1")

    /// The opaque `next_cursor` of a page ending at this task: the version and the sort key, in URL-safe base64
    /// without padding (it goes into a query string as it is).
    var cursor: String {
        Base64URL.encode([ListPosition.cursorVersion] + sortKey)
    }

    /// The position a cursor stands for; nil when the text is no cursor this engine hands out.
    init?(cursor: String) {
        guard let bytes = Base64URL.decode(cursor), bytes.first == ListPosition.cursorVersion,
              let position = ListPosition(sortKey: bytes.dropFirst()) else { return nil }
        self = position
    }
}

/// RFC 4648 §5 base64 (`-` and `_`), without padding.
enum Base64URL {
    private static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".utf8)

    static func encode(_ bytes: [UInt8]) -> String {
        var out: [UInt8] = []
        out.reserveCapacity((bytes.count * 4 + 2) / 3)
        var i = 0
        while i < bytes.count {
            let n = min(3, bytes.count - i)
            var chunk = UInt32(bytes[i]) << 16
            if n > 1 { chunk |= UInt32(bytes[i + 1]) << 8 }
            if n > 2 { chunk |= UInt32(bytes[i + 2]) }
            for j in 0...n { out.append(alphabet[Int(chunk >> UInt32(18 - 6 * j) & 63)]) }
            i += 3
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// nil for a character outside the alphabet, padding, or a length no encoding has.
    static func decode(_ text: String) -> [UInt8]? {
        let chars = Array(text.utf8)
        guard chars.count % 4 != 1 else { return nil }
        var out: [UInt8] = []
        out.reserveCapacity(chars.count * 3 / 4)
        var acc: UInt32 = 0, bits = 0
        for c in chars {
            guard let v = alphabet.firstIndex(of: c) else { return nil }
            acc = acc << 6 | UInt32(v)
            bits += 6
            if bits >= 8 {
                bits -= 8
                out.append(UInt8(acc >> UInt32(bits) & 0xFF))
            }
        }
        // The bits left over must be zero: one encoding per byte string, so a cursor cannot be spelled two ways.
        guard acc & ((1 << UInt32(bits)) - 1) == 0 else { return nil }
        return out
    }
}
