/// How a stage that reported progress spent its time, measured by the engine when the stage ended and kept in
/// the task's completion record (`"stage_profiles"`). It separates what scales with the number of steps from
/// what does not, so that a run with another step count, or a slow first step or final decode, is predicted
/// from history without being thrown off.
struct StageProfile: Sendable, Equatable {
    /// total_steps of the stage's reports; nil when its progress came without steps.
    var steps: Int64?
    /// Seconds from entering the stage to its first progress report (warm-up, the first step).
    var head: Double
    /// Robust seconds per step (per whole stage when `steps` is nil) between the first report and progress 1:
    /// the median pace of the newest reports, so stalls and outliers do not count.
    var stepSeconds: Double
    /// Seconds from reaching progress 1 to the stage's end (a decode after the last step); nil when the
    /// stage ended before its progress reached 1.
    var tail: Double?
    /// How the pace changed over the stage: r in pace(progress) = a × (1 + r × progress), from the mean pace of
    /// its newest `LiveRate.capacity` intervals against the mean pace before them (both means, so stalls weigh
    /// alike in each). Autoregressive models slow down as their context grows (an audio model's last tokens take
    /// 35 % longer than its first), and a live pace measured part-way then understates what is left. Nil when
    /// the stage had too few intervals to compare two spans.
    var drift: Double? = nil

    /// The profile of a stage that has just ended, from what the step path measured.
    /// - Parameters:
    ///   - live: the stage's live figures.
    ///   - startedAt: when the stage was entered.
    ///   - endedAt: when it ended.
    /// - Returns: nil when the stage had fewer than one measured interval.
    static func measured(_ live: LiveRate, startedAt: Double, endedAt: Double) -> StageProfile? {
        guard live.hasReport, live.count > 0 else { return nil }
        let samples = live.sortedSamples()
        // Microseconds, as stage durations: finer digits are clock noise.
        func rounded(_ s: Double) -> Double { (max(0, s) * 1e6).rounded() / 1e6 }
        let steps = live.steps > 0 ? live.steps : nil
        return StageProfile(
            steps: steps, head: rounded(live.firstTime - startedAt),
            stepSeconds: rounded(Sample(sorted: samples).median / Double(steps ?? 1)),
            tail: live.completeTime.map { rounded(endedAt - $0) }, drift: drift(live, samples))
    }

    /// `drift` of a stage that reached progress 1 after more intervals than `LiveRate` keeps: the kept ones are
    /// the newest span, the time before them the earlier one. Intervals are taken as equal in progress (a runner
    /// reports every n steps), so the newest span covers `capacity` × the mean progress per interval.
    private static func drift(_ live: LiveRate, _ samples: [Double]) -> Double? {
        guard let end = live.completeTime, live.count > LiveRate.capacity, !samples.isEmpty else { return nil }
        let perInterval = (live.sampleProgress - live.firstProgress) / Double(live.count)
        let newestSpan = perInterval * Double(samples.count)
        let earlierSpan = 1 - live.firstProgress - newestSpan
        let newestSeconds = samples.reduce(0, +) * perInterval
        let earlierSeconds = end - live.firstTime - newestSeconds
        guard earlierSpan > 1e-6, earlierSeconds > 0, newestSeconds > 0 else { return nil }
        let ratio = (newestSeconds / newestSpan) / (earlierSeconds / earlierSpan)
        // Mean paces at the middles of the two spans: ratio = (1 + r c2) / (1 + r c1).
        let c1 = (live.firstProgress + 1 - newestSpan) / 2, c2 = 1 - newestSpan / 2
        let denominator = c2 - ratio * c1
        guard denominator > 1e-6 else { return nil }
        return (((ratio - 1) / denominator) * 1e6).rounded() / 1e6
    }

    /// Parses `{"steps"?, "head", "step_seconds", "tail"?, "drift"?}`.
    /// - Throws: `EngineError.json` for a wrong shape, `.range` for negative or non-finite numbers.
    static func parse(_ value: JSONValue, context: String) throws -> StageProfile {
        let reader = try JSONObjectReader(value, context: context)
        try reader.rejectUnknownKeys(allowed: ["steps", "head", "step_seconds", "tail", "drift"],
                                     error: EngineError.json)
        func seconds(_ key: String) throws -> Double? {
            guard let n = try reader.number(key) else { return nil }
            guard n.isFinite, n >= 0 else { throw EngineError.range("\"\(key)\" in \(context) must be >= 0, got \(n)") }
            return n
        }
        guard let head = try seconds("head"), let stepSeconds = try seconds("step_seconds") else {
            throw EngineError.json("\(context) needs \"head\" and \"step_seconds\" numbers (seconds)")
        }
        let steps = try reader.integer("steps")
        if let steps, steps <= 0 { throw EngineError.range("\"steps\" in \(context) must be > 0, got \(steps)") }
        let drift = try reader.number("drift")
        if let drift, !drift.isFinite || drift <= -1 {
            throw EngineError.range("\"drift\" in \(context) must be > -1, got \(drift)")
        }
        return StageProfile(steps: steps, head: head, stepSeconds: stepSeconds, tail: try seconds("tail"), drift: drift)
    }

    /// Writes the profile as in completion records.
    func write(to w: inout JSONWriter) {
        w.beginObject()
        w.key("steps"); w.integer(steps)
        w.key("head"); w.number(head)
        w.key("step_seconds"); w.number(stepSeconds)
        w.key("tail"); w.number(tail)
        if let drift {
            w.key("drift"); w.number(drift)
        }
        w.endObject()
    }
}
