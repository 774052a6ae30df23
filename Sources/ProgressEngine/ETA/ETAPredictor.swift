/// Predicts when a task completes (SPEC §10) from the history of similar tasks and the live pace of its current
/// stage. It is a pure function of a snapshot, the history and the engine's time, computed when the task is read,
/// so every read reflects the latest change while the step path only keeps its `LiveRate`.
///
/// The engine's time is its latest event of any task (`EngineCore.eventTime`), never the system clock, so replays with
/// explicit timestamps predict as live runs do; it tells how long the task has been in its stage even when the task
/// itself reported nothing since (a model load, a queue). The remaining time from then is a sum of parts:
/// - each open stage after the current one: its duration in similar tasks' history (`Sample.central`: the
///   seed's 75th percentile while records are few, moving to the value of least expected relative error);
/// - the current stage, once it reports progress: (1 − progress) × pace, plus what usually follows progress 1
///   (a decode after the last step). The pace blends the live median seconds per stage with history's seconds
///   per step × this run's total_steps, the live evidence weighing count / (count + `livePrior`) after `count`
///   measured intervals: more as the stage advances. Time since the latest report counts toward the next interval
///   only, so a stall under way does not make the remaining steps look shorter;
/// - the current stage before its first report: what history says remains of it, given the time already spent
///   in it (a model load that has outlasted every warm load is a cold one);
/// - the queue (a first stage named "queue", while the task is queued), handled apart from execution: when the
///   task starts, as `EngineCore.queueStart` forecasts it from the tasks ahead and those executing; without a
///   forecast, the median of the most recent waits of the same template and resources that still exceed the
///   wait so far. Its uncertainty (the spread of the executions ahead, or of the recent waits) lowers the
///   confidence through the variance like any other part, rather than by a fixed factor: a fixed cut put
///   queued tasks below tasks with larger errors, so confidence no longer ranked the errors;
/// - stages with no history: priced by their template weight at the pace of what is known (the live stage,
///   else the stages with history); with no history at all that is the live pace alone.
/// Once the current stage reports progress, history means the runs most like this one in steps and pace
/// (`HistoryStatistics.similar`): what follows a stage grows with the size of the job.
///
/// Each part carries a variance from the spread of what it was computed from (history across runs, the live
/// intervals, the sample counts); confidence = 1 / (1 + σ / remaining), so it falls as the expected relative
/// error grows.
struct ETAPredictor {
    /// Live intervals that weigh as much as history's pace when blending the two.
    static let livePrior = 4.0

    /// The similar tasks' statistics (`CompletionHistory.similar`), nil without any; only the runs nearest the
    /// task's size when `bySize`.
    let history: HistoryStatistics?
    /// Whether `history` is already the runs nearest the task's size (`Workload`): then it is not narrowed again by
    /// steps and pace, which tell the size less well than the runner's own figures and would leave few records.
    var bySize = false
    /// When `history` was moved to the task's size by a law (`HistoryStatistics.scaled(to:)`): the runs nearest
    /// that size as they were. A stage that reports steps, while it has not reported yet, takes what remains of it
    /// from these: a stepped stage's duration is a warm-up plus its steps, which a law bends at the smallest sizes
    /// (a 1-tile upscale is mostly warm-up), and once the elapsed time passes most of the moved runs, only their
    /// few long outliers are left to say what remains. Its live pace, its tail and the later stages follow the law.
    var unscaled: HistoryStatistics? = nil
    /// Statistics of the tasks sharing the task's queue (same template and resources).
    let queueHistory: HistoryStatistics?

    /// One additive part of the remaining time.
    private struct Part {
        var seconds: Double
        var variance: Double
        /// The durations `seconds` is the central value of, re-centred once the other parts are known
        /// (`Sample.central(besides:)`); nil for parts computed otherwise.
        var sample: Sample?

        init(seconds: Double, variance: Double, sample: Sample? = nil) {
            self.seconds = seconds
            self.variance = variance
            self.sample = sample
        }

        /// The central value of a sample of durations, as a part. Its variance is the sample's robust spread
        /// (`Sample.spread`, widened for a small sample), not its mean square: one run in twenty that stalled for
        /// minutes is not a spread the others share, and its square would make every estimate of the group look
        /// unsure, so confidence would rank groups by their rarest outlier rather than by their usual error. Plus
        /// a prior of `priorSpread` × the value per √count: a few records that happen to agree (one, or identical
        /// ones) do not make a sure estimate (SPEC §10: confidence from sample count and spread); many agreeing
        /// records do.
        init(_ sample: Sample) {
            let c = sample.central(besides: .infinity)
            let n = Double(max(sample.count, 1))
            let spread = sample.spread
            let prior = Part.priorSpread * c
            self.init(seconds: c, variance: spread * spread * (1 + 1 / n) + prior * prior / n, sample: sample)
        }

        /// The relative spread assumed of a duration before records show it (0.25: one record gives a stage
        /// estimate confidence 0.8 on its own; 16 agreeing records, 0.94).
        static let priorSpread = 0.25
    }

    /// The task's ETA, or nil when there is nothing to base it on, or the task failed or was cancelled.
    /// - Parameters:
    ///   - task: a snapshot of the task.
    ///   - now: the engine's time (its latest event of any task); the task's own latest event if that is later.
    ///   - queueStart: for a queued task, when it is forecast to start (epoch seconds) and the variance of that.
    /// - Returns: seconds from `task.updatedAt` and a confidence, both rounded to milliseconds.
    func estimate(_ task: TaskSnapshot, now engineTime: Double,
                  queueStart: (time: Double, variance: Double)? = nil) -> ETAEstimate? {
        switch task.status {
        case .completed: return ETAEstimate(seconds: 0, confidence: 1, deviation: 0)
        case .failed, .cancelled: return nil
        case .queued, .executing: break
        }
        let now = max(task.updatedAt, engineTime)
        let current = task.currentStage
        var parts: [Part] = []
        var unknownWeight = 0.0
        var pace: Double?  // seconds per unit of stage weight, to price stages without history
        let stage = task.stages[current]
        let basis = similarToRun(task)
        if stage.status.isOpen {
            let elapsed = max(0, now - (stage.startedAt ?? now))
            if current == 0 && task.status == .queued && stage.definition.name == "queue" {
                if let queueStart {
                    parts.append(Part(seconds: max(0, queueStart.time - now), variance: queueStart.variance))
                } else if let part = queueRemaining(elapsed: elapsed) {
                    parts.append(part)
                }
            } else if let stageParts = currentRemaining(task, basis, elapsed: elapsed, now: now, pace: &pace) {
                parts += stageParts
            } else {
                unknownWeight += stage.definition.weight * (1 - stage.progress)
            }
        }
        for index in task.stages.indices where index > current && task.stages[index].status.isOpen {
            let durations = basis?.durations(index) ?? Sample(sorted: [])
            if durations.isEmpty {
                unknownWeight += task.stages[index].definition.weight
            } else {
                parts.append(Part(durations))
            }
        }
        if unknownWeight > 0 {
            guard let pace = pace ?? historyPace(task), pace > 0 else { return nil }
            let seconds = unknownWeight * pace
            parts.append(Part(seconds: seconds, variance: seconds * seconds))
        }
        // Each part drawn from history is re-centred for the relative error of the whole.
        let first = parts.reduce(0) { $0 + $1.seconds }
        for i in parts.indices {
            if let sample = parts[i].sample { parts[i].seconds = sample.central(besides: first - parts[i].seconds) }
        }
        let remaining = max(0, parts.reduce(0) { $0 + $1.seconds })
        let deviation = parts.reduce(0) { $0 + $1.variance }.squareRoot()
        let confidence = 1 / (1 + deviation / max(remaining, 1e-3))
        let seconds = now - task.updatedAt + remaining
        return ETAEstimate(seconds: (seconds * 1000).rounded() / 1000, confidence: (confidence * 1000).rounded() / 1000,
                           deviation: deviation)
    }

    /// The expected execution time of a task waiting in its queue: the sum of the mean durations of its later
    /// stages. Means, not the central values of `estimate`: a queue forecast adds up the executions of the tasks
    /// ahead, and a sum of many durations comes close to the sum of their means, well above the sum of their
    /// medians when durations are skewed (a few long jobs among many short ones).
    /// - Parameter task: a snapshot of a queued task.
    /// The variance is the robust spread of each stage (as `Part`), for the forecast's confidence only.
    /// - Returns: seconds and variance; nil when a later stage has no history.
    func expectedExecution(_ task: TaskSnapshot) -> (seconds: Double, variance: Double)? {
        var seconds = 0.0, variance = 0.0
        for index in task.stages.indices where index > task.currentStage && task.stages[index].status.isOpen {
            guard let moments = history?.moments(index) else { return nil }
            seconds += moments.mean
            let spread = history?.durations(index).spread ?? 0
            variance += spread * spread
        }
        return (seconds, variance)
    }

    /// What remains of a duration under way for `elapsed` seconds, from past durations of it.
    private func remaining(of durations: Sample, elapsed: Double) -> Part {
        let left = Sample(sorted: durations.remaining(after: elapsed))
        guard !left.isEmpty else {
            // Longer than every recorded run: something unusual; expect a little more, with little confidence.
            return Part(seconds: durations.spread, variance: elapsed * elapsed)
        }
        return Part(left)
    }

    private func queueRemaining(elapsed: Double) -> Part? {
        let waits = [queueHistory?.recentFirstStage, history?.recentFirstStage].compactMap { $0 }.first { !$0.isEmpty }
        guard let waits else { return nil }
        let left = Sample(sorted: waits.remaining(after: elapsed))
        guard !left.isEmpty else { return Part(seconds: 0, variance: elapsed * elapsed) }
        // The plain median: recent waits say what the load is now; no part of them is re-centred or made
        // conservative, since a longer wait is no safer a guess than a shorter one.
        let spread = left.spread
        return Part(seconds: left.median, variance: spread * spread * (1 + 1 / Double(left.count)))
    }

    /// The history to predict from: once the current stage reports progress, the records of runs most like this
    /// one in steps and pace (`HistoryStatistics.similar`), else every similar task's.
    private func similarToRun(_ task: TaskSnapshot) -> HistoryStatistics? {
        let live = task.live
        guard let history, !bySize, live.stage == task.currentStage, live.hasReport else { return history }
        let samples = Sample(sorted: live.sortedSamples())
        let stepSeconds = samples.isEmpty ? nil : samples.median / Double(max(live.steps, 1))
        return history.similar(stage: live.stage, steps: live.steps, stepSeconds: stepSeconds) ?? history
    }

    /// The current stage's remaining time; nil when neither live reports nor history say anything of it.
    private func currentRemaining(_ task: TaskSnapshot, _ history: HistoryStatistics?, elapsed: Double, now: Double,
                                  pace: inout Double?) -> [Part]? {
        let index = task.currentStage
        let stage = task.stages[index]
        let live = task.live
        let durations = history?.durations(index) ?? Sample(sorted: [])
        if live.stage == index && live.hasReport,
           let (rate, rateVariance, noise, speed) = stagePace(task, history, durations) {
            if stage.definition.weight > 0 { pace = rate / stage.definition.weight }
            let left = 1 - stage.progress
            // The time since the latest report is part of the next interval, but no more than one interval of it.
            let interval = rate * (live.sampleProgress - live.firstProgress) / Double(max(live.count, 1))
            let sinceReport = min(max(0, now - live.lastTime), interval)
            var parts = [Part(seconds: max(0, left * rate - sinceReport),
                              variance: left * left * rateVariance + left * noise)]
            // What follows the last step (a decode) runs on the same device at the same speed as the steps did:
            // history's tails at this run's pace relative to theirs.
            let tails = Sample(sorted: (history?.tails(index).values ?? []).map { $0 * speed })
            if !tails.isEmpty {
                parts.append(live.completeTime.map { remaining(of: tails, elapsed: max(0, now - $0)) } ?? Part(tails))
            }
            return parts
        }
        // Only a stage that reports steps in history is a warm-up plus steps; a model load follows its law.
        let stepped = !(history?.stepSeconds(index).isEmpty ?? true) || !(history?.stageSeconds(index).isEmpty ?? true)
        let unreported = (stepped ? unscaled : nil).map { $0.durations(index) }.flatMap { $0.isEmpty ? nil : $0 }
            ?? durations
        guard !unreported.isEmpty else { return nil }
        return [remaining(of: unreported, elapsed: elapsed)]
    }

    /// Seconds per whole current stage: the live median blended with history's pace for this run.
    /// - Returns: the pace, its variance, the variance per unit of progress of the time still to come
    ///   (interval-to-interval jitter), and this run's speed relative to history's (live pace over history's pace
    ///   per step, 1 while either is unknown); nil when there is neither a live interval nor a history pace.
    private func stagePace(_ task: TaskSnapshot, _ history: HistoryStatistics?, _ durations: Sample)
        -> (Double, Double, Double, Double)? {
        let index = task.currentStage
        let live = task.live
        var prior: Part?
        let perStep = live.steps > 0 ? history?.stepSeconds(index) : history?.stageSeconds(index)
        if let perStep, !perStep.isEmpty {
            let scale = Double(max(live.steps, 1))
            let part = Part(perStep)
            prior = Part(seconds: part.seconds * scale, variance: part.variance * scale * scale)
        } else if !durations.isEmpty {
            // Records without profiles (imported ones): the whole stage's duration is the best pace there is.
            prior = Part(durations)
        }
        // A pace that changes with progress (`StageProfile.drift`): the rest of the stage goes at the mean pace
        // over what is left, not at the pace measured so far (the live window) or at the end (history's figure).
        let drift = min(max(history?.drifts(index).median ?? 0, -0.5), 3)
        let ahead = 1 + drift * (1 + task.stages[index].progress) / 2
        if var part = prior {
            part.seconds *= ahead / (1 + drift)
            prior = part
        }
        let samples = Sample(sorted: live.sortedSamples())
        guard !samples.isEmpty else { return prior.map { ($0.seconds, $0.variance, 0, 1) } }
        let perInterval = (live.sampleProgress - live.firstProgress) / Double(live.count)
        let window = live.sampleProgress - perInterval * Double(samples.count) / 2
        let median = samples.median * ahead / (1 + drift * window), spread = samples.spread
        // Both paces as at progress 0, so the drift does not count as speed; a few intervals say little, and a
        // ratio beyond 1.5 is a run gone wrong (a stall, throttling) that need not hold for what follows.
        var speed = 1.0
        if let perStep, !perStep.isEmpty, live.count >= 3 {
            let historyPace = perStep.median * Double(max(live.steps, 1)) / (1 + drift)
            speed = min(max(samples.median / (1 + drift * window) / historyPace, 1 / 1.5), 1.5)
        }
        // The median of n values is known to about 1.25 σ / √n.
        let liveVariance = 1.56 * spread * spread / Double(samples.count)
        // Progress one interval adds, on average: jitter adds up over the intervals still to come.
        let noise = spread * spread * perInterval
        guard let prior else { return (median, liveVariance, noise, speed) }
        let w = Double(live.count) / (Double(live.count) + ETAPredictor.livePrior)
        return (w * median + (1 - w) * prior.seconds, w * w * liveVariance + (1 - w) * (1 - w) * prior.variance, noise,
                speed)
    }

    /// Seconds per unit of stage weight in history, over the stages it has durations of (the queue aside).
    private func historyPace(_ task: TaskSnapshot) -> Double? {
        guard let history else { return nil }
        var seconds = 0.0, weight = 0.0
        for index in task.stages.indices where !(index == 0 && task.stages[0].definition.name == "queue") {
            let durations = history.durations(index)
            guard !durations.isEmpty else { continue }
            seconds += durations.central(besides: .infinity)
            weight += task.stages[index].definition.weight
        }
        return weight > 0 ? seconds / weight : nil
    }
}
