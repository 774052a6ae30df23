import Glibc

/// A task, batch or template id as a `Dictionary` or `Set` key, equal to another only with the same UTF-8 bytes.
///
/// `String`'s own `==` and hash follow Unicode canonical equivalence: "caf\u{E9}" and "cafe\u{301}" are one key of
/// a `[String: …]`. The engine's tasks are keyed by their bytes (`TaskKey`), Redis' keys are bytes, and so are the
/// ids a client sends: two such ids are two tasks, and every map that follows tasks by id must keep them apart.
struct IdKey: Hashable, Sendable, CustomStringConvertible {
    let id: String

    init(_ id: String) { self.id = id }

    var description: String { id }

    static func == (a: IdKey, b: IdKey) -> Bool { same(a.id, b.id) }

    /// Whether two ids are one: the same UTF-8 bytes (`String`'s `==` would also join canonical equivalents).
    static func same(_ a: String, _ b: String) -> Bool {
        let count = a.utf8.count
        guard count == b.utf8.count else { return false }
        let compared: Bool?? = a.utf8.withContiguousStorageIfAvailable { x in
            b.utf8.withContiguousStorageIfAvailable { y in count == 0 || memcmp(x.baseAddress!, y.baseAddress!, count) == 0 }
        }
        if let compared, let compared { return compared }
        return a.utf8.elementsEqual(b.utf8)  // a string not stored as UTF-8 (bridged) has no contiguous bytes
    }

    func hash(into hasher: inout Hasher) {
        let hashed: Void? = id.utf8.withContiguousStorageIfAvailable { hasher.combine(bytes: UnsafeRawBufferPointer($0)) }
        if hashed == nil {
            for byte in id.utf8 { hasher.combine(byte) }
        }
    }
}
