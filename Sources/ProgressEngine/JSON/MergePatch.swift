import Glibc

/// RFC 7386 JSON Merge Patches between two states of a document the engine wrote itself (`JSONWriter`'s
/// compact output), for the WebSocket `delta` mode: the listener keeps the bytes of the last state it sent of a
/// task and diffs the next state against them, once per change, whatever the number of clients.
///
/// It works on the bytes, not on parsed trees: the two documents come from the same writer with the same key
/// order, so a member whose value bytes are equal is unchanged, and a changed one is copied as it stands. No
/// tree is built, which keeps a patch cheaper than the full document's encoding.
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
        old.withUnsafeBufferPointer { o in
            new.withUnsafeBufferPointer { n in
                // Both must be one object and nothing after it: `members` checks each object it reads ends
                // where its range does, and the ranges here are the whole documents.
                guard o.first == UInt8(ascii: "{"), n.first == UInt8(ascii: "{") else { return nil }
                var out: [UInt8] = []
                out.reserveCapacity(256)
                var scanner = Scanner(old: o, new: n)
                guard scanner.diffObject(old: 0..<o.count, new: 0..<n.count, into: &out) else { return nil }
                return out
            }
        }
    }

    private struct Member {
        let key: Range<Int>
        let value: Range<Int>
    }

    private struct Scanner {
        let old: UnsafeBufferPointer<UInt8>
        let new: UnsafeBufferPointer<UInt8>

        init(old: UnsafeBufferPointer<UInt8>, new: UnsafeBufferPointer<UInt8>) {
            self.old = old
            self.new = new
        }

        /// Writes the patch of the object `old` → `new` (ranges of whole objects, braces included).
        /// - Returns: false when no merge patch expresses the change.
        mutating func diffObject(old oRange: Range<Int>, new nRange: Range<Int>, into out: inout [UInt8]) -> Bool {
            guard let oMembers = Scanner.members(old, oRange), let nMembers = Scanner.members(new, nRange) else {
                return false
            }
            out.append(UInt8(ascii: "{"))
            var first = true
            var matched = 0
            var hint = 0
            for m in nMembers {
                // Same writer, same order: the old member is almost always the next one.
                var found: Member?
                if hint < oMembers.count, Scanner.equal(old, oMembers[hint].key, new, m.key) {
                    found = oMembers[hint]
                    hint += 1
                } else if let i = oMembers.firstIndex(where: { Scanner.equal(old, $0.key, new, m.key) }) {
                    found = oMembers[i]
                    hint = i + 1
                }
                let isObject = new[m.value.lowerBound] == UInt8(ascii: "{")
                if let o = found {
                    matched += 1
                    if Scanner.equal(old, o.value, new, m.value) { continue }
                    if Scanner.isNull(new, m.value) { return false }
                    if isObject && old[o.value.lowerBound] == UInt8(ascii: "{") {
                        let mark = out.count
                        appendKey(m, first: first, into: &out)
                        let start = out.count
                        guard diffObject(old: o.value, new: m.value, into: &out) else { return false }
                        if out.count - start == 2 {
                            out.removeSubrange(mark...)
                        } else {
                            first = false
                        }
                        continue
                    }
                } else if Scanner.isNull(new, m.value) {
                    return false
                }
                if isObject && Scanner.holdsNull(new, m.value) { return false }
                appendKey(m, first: first, into: &out)
                out.append(contentsOf: UnsafeBufferPointer(rebasing: new[m.value]))
                first = false
            }
            // A key of the old object that the new one lacks would need a null ("remove").
            guard matched == oMembers.count else { return false }
            out.append(UInt8(ascii: "}"))
            return true
        }

        private func appendKey(_ m: Member, first: Bool, into out: inout [UInt8]) {
            if !first { out.append(UInt8(ascii: ",")) }
            out.append(contentsOf: UnsafeBufferPointer(rebasing: new[m.key]))
            out.append(UInt8(ascii: ":"))
        }

        static func equal(_ a: UnsafeBufferPointer<UInt8>, _ ra: Range<Int>, _ b: UnsafeBufferPointer<UInt8>,
                          _ rb: Range<Int>) -> Bool {
            guard ra.count == rb.count else { return false }
            return memcmp(a.baseAddress! + ra.lowerBound, b.baseAddress! + rb.lowerBound, ra.count) == 0
        }

        static func isNull(_ b: UnsafeBufferPointer<UInt8>, _ r: Range<Int>) -> Bool {
            r.count == 4 && b[r.lowerBound] == UInt8(ascii: "n")
        }

        /// Whether the object at `r` has a null member at any depth (arrays are opaque to a merge patch).
        static func holdsNull(_ b: UnsafeBufferPointer<UInt8>, _ r: Range<Int>) -> Bool {
            guard let members = members(b, r) else { return true }
            for m in members {
                if isNull(b, m.value) { return true }
                if b[m.value.lowerBound] == UInt8(ascii: "{") && holdsNull(b, m.value) { return true }
            }
            return false
        }

        /// The members of the object at `r` (key ranges include their quotes), nil if it is malformed or does
        /// not end exactly at the end of `r`.
        static func members(_ b: UnsafeBufferPointer<UInt8>, _ r: Range<Int>) -> [Member]? {
            var out: [Member] = []
            out.reserveCapacity(16)
            var i = skipSpace(b, r.lowerBound + 1)
            if i < r.upperBound && b[i] == UInt8(ascii: "}") { return i == r.upperBound - 1 ? out : nil }
            while i < r.upperBound {
                guard b[i] == UInt8(ascii: "\""), let keyEnd = skipString(b, i) else { return nil }
                var j = skipSpace(b, keyEnd)
                guard j < r.upperBound, b[j] == UInt8(ascii: ":") else { return nil }
                j = skipSpace(b, j + 1)
                guard let valueEnd = skipValue(b, j), valueEnd <= r.upperBound else { return nil }
                out.append(Member(key: i..<keyEnd, value: j..<valueEnd))
                i = skipSpace(b, valueEnd)
                guard i < r.upperBound else { return nil }
                if b[i] == UInt8(ascii: "}") { return i == r.upperBound - 1 ? out : nil }
                guard b[i] == UInt8(ascii: ",") else { return nil }
                i = skipSpace(b, i + 1)
            }
            return nil
        }

        static func skipSpace(_ b: UnsafeBufferPointer<UInt8>, _ start: Int) -> Int {
            var i = start
            while i < b.count, b[i] == 0x20 || b[i] == 0x0a || b[i] == 0x0d || b[i] == 0x09 { i += 1 }
            return i
        }

        /// The index after the string that starts at `start` (a quote), nil if it never closes.
        static func skipString(_ b: UnsafeBufferPointer<UInt8>, _ start: Int) -> Int? {
            var i = start + 1
            while i < b.count {
                switch b[i] {
                case UInt8(ascii: "\""): return i + 1
                case UInt8(ascii: "\\"): i += 2
                default: i += 1
                }
            }
            return nil
        }

        /// The index after the value that starts at `start`, nil if it is malformed or cut short. Containers
        /// are skipped by counting brackets outside strings; `members` checks the structure it descends into.
        static func skipValue(_ b: UnsafeBufferPointer<UInt8>, _ start: Int) -> Int? {
            guard start < b.count else { return nil }
            switch b[start] {
            case UInt8(ascii: "\""):
                return skipString(b, start)
            case UInt8(ascii: "{"), UInt8(ascii: "["):
                var depth = 0
                var i = start
                while i < b.count {
                    switch b[i] {
                    case UInt8(ascii: "\""):
                        guard let end = skipString(b, i) else { return nil }
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
