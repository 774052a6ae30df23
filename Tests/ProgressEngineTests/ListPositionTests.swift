import Testing
@testable import ProgressEngine

private func position(_ t: Double, _ id: String) -> ListPosition { ListPosition(createdAt: t, id: id) }

/// The task listing's order and its two spellings: the sort key (Redis' creation index) and the cursor.
@Suite("List position: order, sort key, cursor")
struct ListPositionTests {
    @Test("newest first, ties by id in descending byte order; the sort key sorts the same way, bytewise descending")
    func order() {
        let positions = [position(-1e9, "old"), position(5, "b"), position(5, "a"), position(5, "ab"), position(0, "z"),
                         position(-0.0, "y"), position(1_767_225_600.123456, "now"), position(5.000000000000001, "a"),
                         position(-2.5, "neg"), position(1e-300, "tiny"), position(5, "é"), position(5, "z")]
        let listed = positions.sorted()
        #expect(listed.map(\.id) == ["now", "a", "é", "z", "b", "ab", "a", "tiny", "z", "y", "neg", "old"])
        let byKey = positions.sorted { $1.sortKey.lexicographicallyPrecedes($0.sortKey) }
        #expect(byKey == listed)
        // -0 is 0: one place, one key.
        #expect(position(-0.0, "y").sortKey == position(0, "y").sortKey)
    }

    @Test("ids that differ only in normalisation are two positions, as < orders them")
    func normalisationTwins() {
        let nfc = position(5, "caf\u{E9}"), nfd = position(5, "cafe\u{301}")
        #expect(nfc != nfd && (nfc < nfd) != (nfd < nfc))
        #expect(Set([nfc, nfd]).count == 2 && position(5, "caf\u{E9}") == nfc)
        #expect(ListPosition(cursor: nfd.cursor) == nfd && ListPosition(cursor: nfd.cursor) != nfc)
    }

    @Test("sort keys and cursors read back to the same position, exactly")
    func roundTrip() {
        for p in [position(1_767_225_600.123456789, "task-1"), position(0, "x"), position(-3.75, "a{b}%"),
                  position(.greatestFiniteMagnitude, String(repeating: "é", count: 128)), position(.leastNonzeroMagnitude, "日本語 id")] {
            #expect(ListPosition(sortKey: p.sortKey) == p)
            #expect(ListPosition(cursor: p.cursor) == p)
            #expect(p.cursor.utf8.allSatisfy { $0 == 45 || $0 == 95 || ($0 >= 48 && $0 <= 57) || ($0 >= 65 && $0 <= 90) || ($0 >= 97 && $0 <= 122) })
        }
        #expect(Array(position(1, "id").sortKey.prefix(16)) == Array("bff0000000000000".utf8))
    }

    @Test("anything but a cursor this engine wrote is refused")
    func badCursors() {
        let good = position(10, "t").cursor
        func cursor(_ hex: String, _ id: [UInt8]) -> String { Base64URL.encode(Array(("1" + hex).utf8) + id) }
        let one = "bff0000000000000"  // 1.0
        #expect(ListPosition(cursor: cursor(one, Array("t".utf8))) == position(1, "t"))
        for text in ["", "abc", "a", good + "=", String(good.dropLast()) + "*", "MA",
                     Base64URL.encode(Array("2".utf8) + position(10, "t").sortKey),  // another format
                     cursor(one, []),  // no id
                     cursor(String(one.dropLast()), Array("t".utf8)),  // 15 digits
                     cursor(String(repeating: "z", count: 16), Array("t".utf8)),  // not hex
                     cursor(one.uppercased(), Array("t".utf8)),  // not the one spelling
                     cursor("fff8000000000000", Array("t".utf8)),  // NaN
                     cursor("fff0000000000000", Array("t".utf8)),  // infinity
                     cursor(one, [0xFF, 0xFE]),  // id not UTF-8
                     cursor(one, Array("a\nb".utf8)),  // id with a control character
                     cursor(one, Array(String(repeating: "x", count: 257).utf8))] {  // id too long
            #expect(ListPosition(cursor: text) == nil, "\(text)")
        }
        #expect(ListPosition(cursor: good) != nil)
    }

    @Test("base64url: RFC 4648 vectors, no padding, one spelling per byte string")
    func base64url() {
        let vectors = ["": "", "f": "Zg", "fo": "Zm8", "foo": "Zm9v", "foob": "Zm9vYg", "fooba": "Zm9vYmE", "foobar": "Zm9vYmFy"]
        for (plain, encoded) in vectors {
            #expect(Base64URL.encode(Array(plain.utf8)) == encoded)
            #expect(Base64URL.decode(encoded) == Array(plain.utf8))
        }
        #expect(Base64URL.encode([0xFB, 0xFF]) == "-_8")
        #expect(Base64URL.decode("-_8") == [0xFB, 0xFF])
        #expect(Base64URL.decode("Zh") == nil)  // trailing bits set: "Zg" is the only spelling of "f"
        #expect(Base64URL.decode("Zg==") == nil && Base64URL.decode("Z") == nil && Base64URL.decode("Z+8") == nil)
    }
}
