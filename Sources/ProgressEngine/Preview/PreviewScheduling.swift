import Glibc
import Synchronization

/// When a task's preview is due, and handing pixels to the preview thread.
extension EngineCore {
    /// The preview due for `task` now, if any. Under the shard lock.
    func previewDue(_ task: TaskRecord) -> String? {
        guard previews != nil else { return nil }
        return task.previewDue(milestones: config.previewMilestones, everySteps: config.previewEverySteps,
                               fileStem: EngineCore.fileStem(task.id, created: task.createdAt))
    }

    /// A file-name-safe, collision-free stem for a task: its id's safe characters (up to 48), a hash of the
    /// id, and its creation time in milliseconds (an id reused after expiry gets new names, so a cached
    /// preview is never stale).
    static func fileStem(_ id: String, created: Double) -> String {
        var safe = ""
        for scalar in id.unicodeScalars where safe.unicodeScalars.count < 48 {
            let v = scalar.value
            let ok = (48...57).contains(v) || (65...90).contains(v) || (97...122).contains(v) || v == 45 || v == 95
            safe.unicodeScalars.append(ok ? scalar : "_")
        }
        let hash = TaskKey(owning: id).hash
        let hex = String(hash & 0xffff_ffff, radix: 16)
        let millis = String(Int64((created * 1000).rounded()), radix: 36)
        return safe + "-" + String(repeating: "0", count: 8 - hex.count) + hex + "-" + millis
    }

    /// A preview's URL on a listener. With `taskId` (previews shared through the store) it carries the task's id,
    /// percent-encoded, as `?task_id=`: a listener without the file finds the stored copy by it (the file name
    /// does not give the id back). The path alone stays the file's, so the URL also works where the file is.
    static func previewURL(name: String, taskId: String?) -> String {
        guard let taskId else { return Routes.previewsPrefix + name }
        let hex = Array("0123456789ABCDEF".utf8)
        var url = Routes.previewsPrefix + name + "?task_id="
        for byte in taskId.utf8 {
            let unreserved = (48...57).contains(byte) || (65...90).contains(byte) || (97...122).contains(byte)
                || byte == 45 || byte == 46 || byte == 95 || byte == 126
            if unreserved {
                url.unicodeScalars.append(Unicode.Scalar(byte))
            } else {
                url.unicodeScalars.append("%")
                url.unicodeScalars.append(Unicode.Scalar(hex[Int(byte >> 4)]))
                url.unicodeScalars.append(Unicode.Scalar(hex[Int(byte & 15)]))
            }
        }
        return url
    }

    /// `progress_preview_due`: whether `previewPixels` called now would take a preview (`TaskRecord.duePreview`,
    /// after the steps still in an attached counter, as `previewPixels` sees them). Nothing is copied or marked.
    /// - Parameters:
    ///   - key: the task's key (borrowed from the caller is fine).
    ///   - describe: the id for messages, computed only on error.
    /// - Returns: false for a finished task, which takes no previews.
    /// - Throws: `.notFound`, `.invalidArgument` (id).
    func previewIsDue(key: TaskKey, describe: () throws -> String) throws -> Bool {
        let now = clock.now()
        return try withTask(key, describe: describe, isUpdate: false) { task in
            guard previews != nil, !task.status.isTerminal else { return false }
            catchUpCounter(task, at: max(now, task.lastTimestamp), notify: true)
            return task.duePreview(milestones: config.previewMilestones, everySteps: config.previewEverySteps) != nil
        }
    }

    /// `progress_preview_pixels`: when a preview is due, copies the pixels (the only work on the caller's
    /// thread) and queues them for the preview thread; otherwise returns at once.
    func previewPixels(id: String, pixels: UnsafePointer<UInt8>, width: Int, height: Int, stride: Int, channels: Int) throws {
        try countingRefusal(id: id) {
            try offerPreview(id: id, pixels: pixels, width: width, height: height, stride: stride, channels: channels)
        }
    }

    private func offerPreview(id: String, pixels: UnsafePointer<UInt8>, width: Int, height: Int, stride: Int,
                              channels: Int) throws {
        guard width > 0, height > 0, width <= 65536, height <= 65536 else {
            throw EngineError.invalidArgument("width and height must be within 1...65536, got \(width)x\(height)")
        }
        guard [1, 3, 4].contains(channels) else {
            throw EngineError.invalidArgument("channels must be 1 (gray), 3 (RGB) or 4 (RGBA), got \(channels)")
        }
        let rowBytes = width * channels
        guard stride >= rowBytes else {
            throw EngineError.invalidArgument("stride \(stride) is less than width x channels (\(rowBytes))")
        }
        guard let worker = previews else { return }
        let now = clock.now()
        let due: String? = try withTask(id: id, isUpdate: false) { task in
            guard !task.status.isTerminal else {
                throw EngineError.state("task \"\(id)\" is \(task.status.name) and accepts no further previews")
            }
            // Steps still in the task's counter count: the runner's latest step may have crossed a milestone.
            catchUpCounter(task, at: max(now, task.lastTimestamp), notify: true)
            return previewDue(task)
        }
        guard let fileName = due else { return }
        let buffer = worker.buffer(bytes: rowBytes * height)
        if stride == rowBytes {
            buffer.pointer.update(from: pixels, count: rowBytes * height)
        } else {
            for y in 0..<height {
                (buffer.pointer + y * rowBytes).update(from: pixels + y * stride, count: rowBytes)
            }
        }
        submitPreview(PreviewJob(taskId: id, fileName: fileName,
                                 source: .pixels(buffer, width: width, height: height, channels: channels)))
    }

    func submitPreview(_ job: PreviewJob) {
        guard let worker = previews, worker.submit(job) else {
            previewsDropped.add(1, ordering: .relaxed)
            try? log(id: job.taskId, level: .warning,
                     message: "preview \(job.fileName) skipped: the preview encoder is busy with earlier ones")
            return
        }
    }

    /// On the preview thread, once a job is done.
    func previewFinished(_ job: PreviewJob, _ result: Result<Void, EngineError>) {
        switch result {
        case .success:
            previewsWritten.add(1, ordering: .relaxed)
            // Stored before the task's new preview_url is noted for the writer, so that Redis has the bytes by the
            // time a listener of the fleet hands that URL out.
            if let dir = previewDirectory {
                store.persistPreview(taskId: job.taskId, name: job.fileName, path: dir + "/" + job.fileName)
            }
            let url = EngineCore.previewURL(name: job.fileName, taskId: store.sharesPreviews ? job.taskId : nil)
            let attached = (try? withTask(id: job.taskId) { task -> Bool in
                // Stamped at the task's latest event: a background change must not move the runner's timeline
                // (a replay's next explicit timestamp would look like it went backwards).
                task.setPreview(file: job.fileName, url: url, at: task.lastTimestamp)
                return true
            }) ?? false
            // The task expired while its preview was being made: the file has no owner.
            if !attached, let dir = previewDirectory { unlink(dir + "/" + job.fileName) }
        case let .failure(error):
            previewsFailed.add(1, ordering: .relaxed)
            try? log(id: job.taskId, level: .warning, message: "preview \(job.fileName) failed: \(error.message)")
        }
    }
}
