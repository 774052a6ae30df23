import CProgress

/// One message ready for the wire: a complete unmasked WebSocket text frame (header and payload), built once
/// and shared by every client it goes to, so a fan-out to N clients serialises and frames it once.
final class WireMessage {
    let frame: UnsafeMutablePointer<UInt8>
    /// Bytes of the whole frame (header + payload).
    let frameLength: Int
    /// Bytes of the payload (the JSON text).
    let length: Int

    /// The permessage-deflate frame (RSV1 set), made on the first write to a client that negotiated it; nil
    /// until then, and `frame` itself when compression would not make it smaller.
    @exclusivity(unchecked) private var deflatedFrame: UnsafeMutablePointer<UInt8>?
    @exclusivity(unchecked) private var deflatedFrameLength = 0

    init(_ bytes: [UInt8]) {
        let header = WireMessage.headerLength(bytes.count)
        let storage = UnsafeMutablePointer<UInt8>.allocate(capacity: header + bytes.count)
        // RFC 6455 §5.2: FIN + text opcode, then the payload length; no mask (server).
        WireMessage.writeHeader(storage, first: 0x81, payload: bytes.count)
        bytes.withUnsafeBufferPointer { src in
            if let base = src.baseAddress { (storage + header).update(from: base, count: bytes.count) }
        }
        frame = storage
        frameLength = header + bytes.count
        length = bytes.count
    }

    /// The frame as a client with permessage-deflate gets it: compressed once, shared by all such clients.
    func deflated(with deflater: OpaquePointer?) -> (UnsafeMutablePointer<UInt8>, Int) {
        if let deflatedFrame { return (deflatedFrame, deflatedFrameLength) }
        let header = frameLength - length
        guard length > 32 else {
            deflatedFrame = frame
            deflatedFrameLength = frameLength
            return (frame, frameLength)
        }
        // Deflate output of incompressible input is a few bytes longer; such a frame is sent as it is.
        let storage = UnsafeMutablePointer<UInt8>.allocate(capacity: frameLength)
        let packed = CProgress_deflate_message(deflater, frame + header, length, storage + 10, frameLength - 10)
        guard packed >= 0, WireMessage.headerLength(Int(packed)) + Int(packed) < frameLength else {
            storage.deallocate()
            deflatedFrame = frame
            deflatedFrameLength = frameLength
            return (frame, frameLength)
        }
        deflatedFrame = storage
        deflatedFrameLength = WireMessage.compressedFrame(storage, payloadAt: 10, length: Int(packed))
        return (storage, deflatedFrameLength)
    }

    /// Writes this message's frame for one client, compressed against the last message `window` compressed for
    /// it, at `out` (room for 4 + `CProgress_window_bound(length)` bytes). Returns the frame's length.
    func writeDeflated(with window: OpaquePointer, to out: UnsafeMutablePointer<UInt8>) -> Int {
        let header = frameLength - length
        let packed = CProgress_window_deflate(window, frame + header, length, out + 4, CProgress_window_bound(length))
        precondition(packed > 0, "a message within the window's bounds did not compress")
        return WireMessage.compressedFrame(out, payloadAt: 4, length: Int(packed))
    }

    /// Frames a compressed payload of `length` bytes written at `storage + offset` (room left for the longest
    /// header it can need): FIN + RSV1 ("compressed", RFC 7692 §6) + text opcode, the payload moved up behind a
    /// shorter header. Returns the frame's length.
    private static func compressedFrame(_ storage: UnsafeMutablePointer<UInt8>, payloadAt offset: Int, length: Int) -> Int {
        let header = headerLength(length)
        writeHeader(storage, first: 0xC1, payload: length)
        if header != offset { (storage + header).update(from: storage + offset, count: length) }
        return header + length
    }

    /// Writes the frame header: `first` (FIN, RSV bits, opcode), then the payload length in 7, 7+16 or 7+64 bits.
    private static func writeHeader(_ storage: UnsafeMutablePointer<UInt8>, first: UInt8, payload: Int) {
        storage[0] = first
        switch headerLength(payload) {
        case 2:
            storage[1] = UInt8(payload)
        case 4:
            storage[1] = 126
            storage[2] = UInt8(truncatingIfNeeded: payload >> 8)
            storage[3] = UInt8(truncatingIfNeeded: payload)
        default:
            storage[1] = 127
            for i in 0..<8 { storage[2 + i] = UInt8(truncatingIfNeeded: UInt64(payload) >> (56 - 8 * UInt64(i))) }
        }
    }

    convenience init(_ writer: JSONWriter) {
        self.init(writer.bytes)
    }

    deinit {
        if let deflatedFrame, deflatedFrame != frame { deflatedFrame.deallocate() }
        frame.deallocate()
    }

    static func headerLength(_ payload: Int) -> Int {
        payload < 126 ? 2 : payload <= 0xFFFF ? 4 : 10
    }
}

/// The longest message compressed per client against its window (CPROGRESS_WINDOW_MESSAGE_MAX).
let windowMessageMax = Int(CPROGRESS_WINDOW_MESSAGE_MAX)
