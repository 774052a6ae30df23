import CProgress
import Glibc

/// Where a preview's pixels come from.
enum PreviewSource {
    /// Tightly packed 8-bit pixels copied from the runner (a pooled buffer, returned after encoding).
    case pixels(PixelBuffer, width: Int, height: Int, channels: Int)
    /// A PNG file the runner wrote (the seed's `preview_path`), decoded here, off the runner's thread.
    case file(String)
}

/// A pixel buffer owned by the preview pipeline; reused so the runner's copy lands in memory that is
/// already mapped (a fresh multi-megabyte allocation would page-fault on every preview).
final class PixelBuffer: @unchecked Sendable {
    let pointer: UnsafeMutablePointer<UInt8>
    let capacity: Int

    init(capacity: Int) {
        self.capacity = capacity
        pointer = .allocate(capacity: max(capacity, 1))
    }

    deinit {
        pointer.deallocate()
    }
}

/// One preview to make: read/downscale/encode, then write `fileName` into the preview folder.
struct PreviewJob: @unchecked Sendable {
    let taskId: String
    let fileName: String
    let source: PreviewSource
}

/// The engine's preview thread: downscales and PNG-encodes previews off the runners' threads, writes each
/// file atomically (temporary name, then rename) and reports back to the engine. Jobs beyond a small queue
/// are refused (counted), so a runner sending frames faster than they encode never piles up memory.
final class PreviewWorker: @unchecked Sendable {
    static let queueCapacity = 8
    /// PNG inputs larger than this many pixels are refused (a decompression bomb would otherwise allocate GBs).
    static let maxSourcePixels = 64 << 20

    let directory: String
    let maxSize: Int
    private let worker = WorkerThread()
    // Guarded by the worker's lock.
    private var queue: [PreviewJob] = []
    private var pool: [PixelBuffer] = []
    private let done: @Sendable (PreviewJob, Result<Void, EngineError>) -> Void

    /// - Parameters:
    ///   - directory: the preview folder (created if missing).
    ///   - maxSize: the longest side of a preview, in pixels.
    ///   - done: called on the worker thread after each job.
    init(directory: String, maxSize: Int, done: @escaping @Sendable (PreviewJob, Result<Void, EngineError>) -> Void) throws {
        self.directory = directory
        self.maxSize = maxSize
        self.done = done
        if mkdir(directory, 0o755) != 0 && errno != EEXIST {
            throw EngineError.io("preview_dir \(directory): cannot create it: \(String(cString: strerror(errno)))")
        }
        try worker.start("the preview thread", name: "pe-preview") { [self] in self.loop() }
    }

    /// A buffer of at least `bytes`, from the pool when one fits.
    func buffer(bytes: Int) -> PixelBuffer {
        worker.lock()
        defer { worker.unlock() }
        if let index = pool.firstIndex(where: { $0.capacity >= bytes && $0.capacity <= bytes * 2 }) {
            return pool.remove(at: index)
        }
        return PixelBuffer(capacity: bytes)
    }

    /// Queues a job; false if the queue is full or the worker is stopping (the caller counts a dropped preview).
    func submit(_ job: PreviewJob) -> Bool {
        worker.lock()
        defer { worker.unlock() }
        guard !worker.stopping, queue.count < PreviewWorker.queueCapacity else {
            if case let .pixels(buffer, _, _, _) = job.source { recycle(buffer) }
            return false
        }
        queue.append(job)
        worker.signal()
        return true
    }

    /// Finishes the queued jobs and stops the thread; idempotent.
    func stop() {
        worker.stop()
    }

    /// Called with the worker's lock held.
    private func recycle(_ buffer: PixelBuffer) {
        if pool.count < 2 { pool.append(buffer) }
    }

    private func loop() {
        while true {
            worker.lock()
            while queue.isEmpty && !worker.stopping { worker.wait() }
            if queue.isEmpty {
                worker.unlock()
                return
            }
            let job = queue.removeFirst()
            worker.unlock()
            let result = make(job)
            if case let .pixels(buffer, _, _, _) = job.source {
                worker.lock()
                recycle(buffer)
                worker.unlock()
            }
            done(job, result)
        }
    }

    /// Decodes (for files), downscales and writes one preview.
    func make(_ job: PreviewJob) -> Result<Void, EngineError> {
        var err = [CChar](repeating: 0, count: 512)
        func message() -> String { String(decoding: err.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self) }
        let pixels: UnsafePointer<UInt8>
        let width: Int, height: Int, channels: Int
        var decoded: UnsafeMutablePointer<UInt8>?
        defer { free(decoded) }
        switch job.source {
        case let .pixels(buffer, w, h, c):
            pixels = UnsafePointer(buffer.pointer)
            (width, height, channels) = (w, h, c)
        case let .file(path):
            var w: Int32 = 0, h: Int32 = 0, c: Int32 = 0
            guard CProgress_png_read(path, PreviewWorker.maxSourcePixels, &decoded, &w, &h, &c, &err, err.count) == 0,
                  let decoded else {
                return .failure(.io(message()))
            }
            pixels = UnsafePointer(decoded)
            (width, height, channels) = (Int(w), Int(h), Int(c))
        }
        let scale = min(1.0, Double(maxSize) / Double(max(width, height)))
        let outW = max(1, Int((Double(width) * scale).rounded()))
        let outH = max(1, Int((Double(height) * scale).rounded()))
        var scaled: UnsafeMutablePointer<UInt8>?
        defer { scaled?.deallocate() }
        var output = pixels
        if outW != width || outH != height {
            let small = UnsafeMutablePointer<UInt8>.allocate(capacity: outW * outH * channels)
            scaled = small
            CProgress_downscale(pixels, Int32(width), Int32(height), width * channels, Int32(channels), small,
                                Int32(outW), Int32(outH))
            output = UnsafePointer(small)
        }
        let finalPath = directory + "/" + job.fileName
        let temporary = directory + "/.tmp-" + job.fileName
        guard CProgress_png_write(temporary, output, Int32(outW), Int32(outH), Int32(channels), &err, err.count) == 0 else {
            unlink(temporary)
            return .failure(.io(message()))
        }
        guard rename(temporary, finalPath) == 0 else {
            let why = String(cString: strerror(errno))
            unlink(temporary)
            return .failure(.io("cannot move preview into place as \(finalPath): \(why)"))
        }
        return .success(())
    }
}
