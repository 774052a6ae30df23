import CProgress

/// Process-wide resource figures, sampled by the maintenance thread: CPU % (of one core) from the change in
/// CPU time since the previous sample, resident memory, and GPU utilisation / memory through NVML when it is
/// there (nil otherwise, never an error).
struct ResourceSampler {
    // The first sample is one interval after the engine opens, like every later one.
    private var lastSampleAt = monotonicNow()
    private var lastCPUSeconds: Double?
    private var lastWall: Double?

    func isDue(now: Double, intervalMs: Int) -> Bool {
        now - lastSampleAt >= Double(intervalMs) / 1000
    }

    /// - Parameter now: monotonic seconds.
    /// - Returns: the figures, or nil when /proc cannot be read.
    mutating func sample(now: Double) -> ResourceUsage? {
        lastSampleAt = now
        var cpuSeconds = 0.0, rss = 0.0
        guard CProgress_process_usage(&cpuSeconds, &rss) == 0 else { return nil }
        var usage = ResourceUsage()
        usage.memoryMB = (rss / (1024 * 1024) * 10).rounded() / 10
        if let lastCPU = lastCPUSeconds, let lastWall, now > lastWall {
            usage.cpuPercent = ((cpuSeconds - lastCPU) / (now - lastWall) * 1000).rounded() / 10
        }
        lastCPUSeconds = cpuSeconds
        lastWall = now
        var gpu = 0.0, gpuMemory = 0.0
        if CProgress_gpu_usage(&gpu, &gpuMemory) == 0 {
            usage.gpuPercent = gpu
            usage.gpuMemoryMB = gpuMemory
        }
        return usage
    }
}
