import Glibc

/// RFC 7386 JSON Merge Patches between two states of a document the engine wrote itself (`JSONWriter`'s
/// compact output), for the WebSocket `delta` mode: the listener keeps the bytes of the last state it sent of a
/// task and diffs the next state against them, once per change, whatever the number of clients.
///
/// It works on the bytes, not on parsed trees: the two documents come from the same writer with the same key
/// order, so a member whose value bytes are equal is unchanged, and a changed one is copied as it stands. Each
/// document is read once, into an `Outline` of its objects' members; the listener keeps the outline of the state
/// it sent with that state, so a change reads only its new document.
///
/// RFC 7386 reads a null member as "remove this key", so a patch cannot say "this key is now null" and a
/// TaskProgress keeps every key, null ones included. `diff` therefore answers nil (send the full state) when a
/// member is removed, when a value becomes null, or when a value becomes an object holding a null member at any
/// depth (merging it into a non-object drops its nulls). Arrays are replaced whole and keep their nulls. So every
/// patch it answers reconstructs the new document exactly, with any RFC 7386 implementation.
enum MergePatch {
    /// The merge patch that turns `old` into `new` (both JSON objects), or nil when none expresses the change
    /// exactly (see above) or either document is not a well-formed object.
    static func diff(from old: [UInt8], to new: [UInt8]) -> [UInt8]? {
        diff(from: old[...], to: new[...])
    }

    /// The same for documents inside larger buffers (the TaskProgress inside a `progress.update` message).
    static func diff(from old: ArraySlice<UInt8>, to new: ArraySlice<UInt8>) -> [UInt8]? {
        guard let oldOutline = Outline(old), let newOutline = Outline(new) else { return nil }
        return diff(from: old, oldOutline, to: new, newOutline)
    }

    /// The same with both documents' outlines at hand (each made by `Outline.init` from that document).
    static func diff(from old: ArraySlice<UInt8>, _ oldOutline: Outline, to new: ArraySlice<UInt8>,
                     _ newOutline: Outline) -> [UInt8]? {
        old.withUnsafeBufferPointer { o in
            new.withUnsafeBufferPointer { n in
                var out: [UInt8] = []
                out.reserveCapacity(256)
                let patcher = Patcher(old: o, oldOutline: oldOutline, new: n, newOutline: newOutline)
                guard patcher.diffObject(old: oldOutline.root, new: newOutline.root, into: &out) else { return nil }
                return out
            }
        }
    }

    /// Every object of a document and its members, found in one pass. Offsets are from the document's start.
    struct Outline {
        struct Member {
            let keyStart: Int32
            let keyEnd: Int32
            let valueStart: Int32
            let valueEnd: Int32
            /// The value's index in `objects` when it is an object, else -1.
            let object: Int32
        }

        /// Every object's members, each object's together (objects in the order they close).
        private(set) var members: [Member] = []
        /// Per object, where its members lie in `members`.
        private(set) var objects: [Range<Int32>] = []
        /// The document itself: the outermost object closes last.
        var root: Int { objects.count - 1 }

        /// Deeper documents get no outline (no merge patch; their receiver gets the full state).
        static let maxDepth = 64

        /// The outline of a document that is one JSON object and nothing else; nil for anything else.
        init?(_ document: ArraySlice<UInt8>) {
            let parsed: Outline? = document.withUnsafeBufferPointer { b in
                guard b.count > 0, b.count < Int(Int32.max), b[0] == UInt8(ascii: "{") else { return nil }
                var outline = Outline(empty: ())
                var open: [Member] = []  // the members of the objects still open, innermost last
                open.reserveCapacity(32)
                guard let end = outline.object(b, at: 0, depth: 0, open: &open), end == b.count else { return nil }
                return outline
            }
            guard let parsed else { return nil }
            self = parsed
        }

        private init(empty: Void) {
            members.reserveCapacity(64)
            objects.reserveCapacity(8)
        }

        /// Reads the object starting at `start` (its `{`); answers the index after its `}`.
        private mutating func object(_ b: UnsafeBufferPointer<UInt8>, at start: Int, depth: Int,
                                     open: inout [Member]) -> Int? {
            guard depth < Outline.maxDepth else { return nil }
            let first = open.count
            var i = Scan.space(b, start + 1)
            if i < b.count && b[i] == UInt8(ascii: "}") { return close(open: &open, from: first, end: i) }
            while i < b.count {
                guard b[i] == UInt8(ascii: "\""), let keyEnd = Scan.string(b, i) else { return nil }
                var j = Scan.space(b, keyEnd)
                guard j < b.count, b[j] == UInt8(ascii: ":") else { return nil }
                j = Scan.space(b, j + 1)
                guard j < b.count else { return nil }
                var valueEnd: Int
                var object: Int32 = -1
                if b[j] == UInt8(ascii: "{") {
                    guard let end = self.object(b, at: j, depth: depth + 1, open: &open) else { return nil }
                    valueEnd = end
                    object = Int32(objects.count - 1)
                } else {
                    guard let end = Scan.value(b, j) else { return nil }
                    valueEnd = end
                }
                open.append(Member(keyStart: Int32(i), keyEnd: Int32(keyEnd), valueStart: Int32(j),
                                   valueEnd: Int32(valueEnd), object: object))
                i = Scan.space(b, valueEnd)
                guard i < b.count else { return nil }
                if b[i] == UInt8(ascii: "}") { return close(open: &open, from: first, end: i) }
                guard b[i] == UInt8(ascii: ",") else { return nil }
                i = Scan.space(b, i + 1)
            }
            return nil
        }

        /// Moves the members of the object that ends at `end` (its `}`) from `open` to `members`.
        private mutating func close(open: inout [Member], from first: Int, end: Int) -> Int {
            let start = Int32(members.count)
            members.append(contentsOf: open[first...])
            open.removeSubrange(first...)
            objects.append(start..<Int32(members.count))
            return end + 1
        }
    }

    private struct Patcher {
        let old: UnsafeBufferPointer<UInt8>
        let oldOutline: Outline
        let new: UnsafeBufferPointer<UInt8>
        let newOutline: Outline

        /// Writes the patch of object `o` of the old document → object `n` of the new one.
        /// - Returns: false when no merge patch expresses the change.
        func diffObject(old o: Int, new n: Int, into out: inout [UInt8]) -> Bool {
            let oRange = oldOutline.objects[o], nRange = newOutline.objects[n]
            out.append(UInt8(ascii: "{"))
            var first = true
            var matched = 0
            var hint = Int(oRange.lowerBound)
            for index in Int(nRange.lowerBound)..<Int(nRange.upperBound) {
                let m = newOutline.members[index]
                // Same writer, same order: the old member is almost always the next one.
                var found: Outline.Member?
                if hint < Int(oRange.upperBound), sameKey(oldOutline.members[hint], m) {
                    found = oldOutline.members[hint]
                    hint += 1
                } else if let i = (Int(oRange.lowerBound)..<Int(oRange.upperBound)).first(where: {
                    sameKey(oldOutline.members[$0], m)
                }) {
                    found = oldOutline.members[i]
                    hint = i + 1
                }
                if let f = found {
                    matched += 1
                    if Scan.equal(old, f.valueStart, f.valueEnd, new, m.valueStart, m.valueEnd) { continue }
                    if Scan.isNull(new, m.valueStart, m.valueEnd) { return false }
                    if m.object >= 0 && f.object >= 0 {
                        let mark = out.count
                        appendKey(m, first: first, into: &out)
                        let start = out.count
                        guard diffObject(old: Int(f.object), new: Int(m.object), into: &out) else { return false }
                        if out.count - start == 2 {
                            out.removeSubrange(mark...)
                        } else {
                            first = false
                        }
                        continue
                    }
                } else if Scan.isNull(new, m.valueStart, m.valueEnd) {
                    return false
                }
                if m.object >= 0 && holdsNull(Int(m.object)) { return false }
                appendKey(m, first: first, into: &out)
                out.append(contentsOf: UnsafeBufferPointer(rebasing: new[Int(m.valueStart)..<Int(m.valueEnd)]))
                first = false
            }
            // A key of the old object that the new one lacks would need a null ("remove").
            guard matched == oRange.count else { return false }
            out.append(UInt8(ascii: "}"))
            return true
        }

        private func sameKey(_ o: Outline.Member, _ n: Outline.Member) -> Bool {
            Scan.equal(old, o.keyStart, o.keyEnd, new, n.keyStart, n.keyEnd)
        }

        private func appendKey(_ m: Outline.Member, first: Bool, into out: inout [UInt8]) {
            if !first { out.append(UInt8(ascii: ",")) }
            out.append(contentsOf: UnsafeBufferPointer(rebasing: new[Int(m.keyStart)..<Int(m.keyEnd)]))
            out.append(UInt8(ascii: ":"))
        }

        /// Whether object `n` of the new document has a null member at any depth (arrays are opaque to a merge
        /// patch).
        private func holdsNull(_ n: Int) -> Bool {
            for index in newOutline.objects[n] {
                let m = newOutline.members[Int(index)]
                if Scan.isNull(new, m.valueStart, m.valueEnd) || (m.object >= 0 && holdsNull(Int(m.object))) {
                    return true
                }
            }
            return false
        }
    }

    /// Byte-level reading of a JSON document.
    private enum Scan {
        static func equal(_ a: UnsafeBufferPointer<UInt8>, _ aStart: Int32, _ aEnd: Int32,
                          _ b: UnsafeBufferPointer<UInt8>, _ bStart: Int32, _ bEnd: Int32) -> Bool {
            let count = Int(aEnd - aStart)
            guard count == Int(bEnd - bStart) else { return false }
            return memcmp(a.baseAddress! + Int(aStart), b.baseAddress! + Int(bStart), count) == 0
        }

        static func isNull(_ b: UnsafeBufferPointer<UInt8>, _ start: Int32, _ end: Int32) -> Bool {
            end - start == 4 && b[Int(start)] == UInt8(ascii: "n")
        }

        static func space(_ b: UnsafeBufferPointer<UInt8>, _ start: Int) -> Int {
            var i = start
            while i < b.count, b[i] == 0x20 || b[i] == 0x0a || b[i] == 0x0d || b[i] == 0x09 { i += 1 }
            return i
        }

        /// The index after the string that starts at `start` (a quote), nil if it never closes. Most of a
        /// document's bytes are in strings: eight at a time are skipped while none is a quote or a backslash.
        static func string(_ b: UnsafeBufferPointer<UInt8>, _ start: Int) -> Int? {
            var i = start + 1
            let base = UnsafeRawPointer(b.baseAddress!)
            while true {
                while i + 8 <= b.count {
                    let word = UInt64(littleEndian: base.loadUnaligned(fromByteOffset: i, as: UInt64.self))
                    let special = zeroBytes(word ^ 0x2222_2222_2222_2222) | zeroBytes(word ^ 0x5C5C_5C5C_5C5C_5C5C)
                    if special != 0 {
                        i += special.trailingZeroBitCount / 8
                        break
                    }
                    i += 8
                }
                guard i < b.count else { return nil }
                switch b[i] {
                case UInt8(ascii: "\""): return i + 1
                case UInt8(ascii: "\\"): i += 2
                default: i += 1
                }
            }
        }

        /// The high bit of each zero byte of `v` set; exact for the lowest zero byte, which is all `string` reads
        /// (a borrow can only mark bytes above a zero one).
        @inline(__always)
        private static func zeroBytes(_ v: UInt64) -> UInt64 {
            (v &- 0x0101_0101_0101_0101) & ~v & 0x8080_8080_8080_8080
        }

        /// The index after the value that starts at `start`, nil if it is malformed or cut short. An array is
        /// skipped by counting brackets outside strings: a merge patch replaces it whole.
        static func value(_ b: UnsafeBufferPointer<UInt8>, _ start: Int) -> Int? {
            guard start < b.count else { return nil }
            switch b[start] {
            case UInt8(ascii: "\""):
                return string(b, start)
            case UInt8(ascii: "{"), UInt8(ascii: "["):
                var depth = 0
                var i = start
                while i < b.count {
                    switch b[i] {
                    case UInt8(ascii: "\""):
                        guard let end = string(b, i) else { return nil }
                        i = end
                        continue
                    case UInt8(ascii: "{"), UInt8(ascii: "["):
                        depth += 1
                    case UInt8(ascii: "}"), UInt8(ascii: "]"):
                        depth -= 1
                        if depth == 0 { return i + 1 }
                    default:
                        break
                    }
                    i += 1
                }
                return nil
            default:
                // A number or a literal: up to the next delimiter.
                var i = start
                while i < b.count {
                    let c = b[i]
                    if c == UInt8(ascii: ",") || c == UInt8(ascii: "}") || c == UInt8(ascii: "]") || c == 0x20
                        || c == 0x0a || c == 0x0d || c == 0x09 { break }
                    i += 1
                }
                return i > start ? i : nil
            }
        }
    }
}
