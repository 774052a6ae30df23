import Glibc

/// Reading a preview file back whole: the listener serving it, the Redis store copying it to Redis.
enum PreviewFile {
    enum Contents {
        /// No such regular file (or it cannot be read).
        case missing
        /// The file has this many bytes, more than the limit; nothing was read.
        case tooLarge(Int)
        case bytes([UInt8])
    }

    /// The bytes of the file at `path`, unless it holds more than `limit` bytes.
    static func read(_ path: String, limit: Int) -> Contents {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return .missing }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0, info.st_mode & S_IFMT == S_IFREG else { return .missing }
        let size = Int(info.st_size)
        guard size <= limit else { return .tooLarge(size) }
        // One byte more than the size: a file that grew since fstat is caught as too large, not cut short.
        var bytes = [UInt8](repeating: 0, count: size + 1)
        var count = 0
        while count < bytes.count {
            let n = bytes.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress! + count, $0.count - count) }
            if n < 0 && errno == EINTR { continue }
            if n < 0 { return .missing }
            if n == 0 { break }
            count += n
        }
        if count > limit { return .tooLarge(count) }
        bytes.removeLast(bytes.count - count)
        return .bytes(bytes)
    }
}
