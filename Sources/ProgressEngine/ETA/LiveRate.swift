/// The pace of the stage a task is in, kept by the step path for the ETA: a few stores and one division per
/// report, no allocation. Everything costlier (sorting, statistics, the prediction) happens on the read side.
///
/// Each report that advances the stage's progress yields one sample: seconds per whole stage at the pace of
/// that interval (Δt / Δprogress). The newest `capacity` samples are kept; their median is the live pace,
/// robust to a slow first step, a stall or a single late report. Time before the stage's first report
/// ("head": model warm-up, the first step) and after its progress reached 1 ("tail": a decode after the
/// last step) is kept apart, since it does not scale with the number of steps.
struct LiveRate: Sendable {
    static let capacity = 16

    /// The stage these figures describe; -1 until a stage is entered.
    private(set) var stage = -1
    /// total_steps of the reports (0 when progress came without steps, from a stage update).
    private(set) var steps: Int64 = 0
    /// Whether the stage has had a report. A stored flag: testing a Double for NaN takes nine instructions.
    private(set) var hasReport = false
    /// Time and progress of the stage's first report (when `hasReport`).
    private(set) var firstTime = 0.0
    private(set) var firstProgress = 0.0
    /// Time and progress of the latest report that added progress.
    private(set) var lastTime = 0.0
    private(set) var lastProgress = 0.0
    /// Where the interval being measured started: the latest report that made a sample (or the first report).
    /// Equal to `lastTime` / `lastProgress` when report times are precise (every report makes a sample).
    private(set) var sampleTime = 0.0
    private(set) var sampleProgress = 0.0
    /// Samples seen since the first report (may exceed `capacity`; only the newest are kept).
    private(set) var count = 0
    private var samples = InlineArray<16, Double>(repeating: 0)

    /// When the progress reached 1, or nil. Reports that add no progress leave `lastTime` alone, so once at 1
    /// it stays the time of reaching 1.
    var completeTime: Double? { hasReport && lastProgress >= 1 ? lastTime : nil }

    /// The shortest interval sampled when report times read in ticks of `tick` seconds: a shorter one reads as 0
    /// or a whole tick, so steps faster than the tick would have a median pace of 0, and steps of a few ticks one
    /// off by up to a tick (a 3 ms step read as 4 ms). Over 16 ticks a sample is within 1/16 of the true interval.
    static func sampleSpan(tick: Double) -> Double { 16 * tick }

    /// Starts over for a stage just entered.
    mutating func enter(stage index: Int) {
        self = LiveRate()
        stage = index
    }

    /// Notes a report of the current stage's progress.
    /// - Parameters:
    ///   - progress: the stage's progress, 0...1.
    ///   - steps: total_steps of the report, 0 for progress given without steps.
    ///   - ts: the report's time.
    ///   - minSpan: the shortest interval that makes a sample (`sampleSpan(tick:)` of the clock `ts` came from);
    ///     0 when `ts` is precise.
    @inline(__always)
    mutating func note(progress: Double, steps: Int64, at ts: Double, minSpan: Double = 0) {
        let gained = progress - lastProgress
        // The common case first, in as few instructions as it takes: one more interval of the same loop.
        if gained > 0 && steps == self.steps && hasReport {
            lastTime = ts
            lastProgress = progress
            // An interval shorter than the clock measures well goes on into the next report's; the one that ends
            // the stage is taken anyway (a stage shorter than `minSpan` still has a sample, and the samples end at 1).
            let span = ts - sampleTime
            if span >= minSpan || (progress >= 1 && span > 0) {
                samples[count & (LiveRate.capacity - 1)] = span / (progress - sampleProgress)
                count &+= 1
                sampleTime = ts
                sampleProgress = progress
            }
        } else if gained < 0 || steps != self.steps || !hasReport {
            restart(progress: progress, steps: steps, at: ts)
        }
    }

    /// A first report, a new total or progress going back (a restarted loop) starts a new measurement.
    @inline(never)
    private mutating func restart(progress: Double, steps: Int64, at ts: Double) {
        let index = stage
        self = LiveRate()
        stage = index
        self.steps = steps
        hasReport = true
        firstTime = ts
        firstProgress = progress
        lastTime = ts
        lastProgress = progress
        sampleTime = ts
        sampleProgress = progress
    }

    /// The kept samples (seconds per whole stage), sorted ascending.
    func sortedSamples() -> [Double] {
        let kept = min(count, LiveRate.capacity)
        var out: [Double] = []
        out.reserveCapacity(kept)
        for i in 0..<kept { out.append(samples[i]) }
        return out.sorted()
    }
}
