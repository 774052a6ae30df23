import Glibc

/// Per-stage statistics of one set of similar completion records, computed once when the set changes and then
/// shared by every prediction that reads it (a dashboard may read many tasks many times a second).
struct HistoryStatistics: Sendable {
    /// How many of the newest records say what queue waits are like now: waits follow the load of the moment,
    /// so old ones mislead more than they inform.
    static let recentQueueRecords = 10

    /// Records in the set.
    let count: Int
    /// The records themselves, oldest first, for `similar(stage:steps:stepSeconds:)`.
    private let records: [CompletionRecord]
    /// Per stage index, the records with a profile of it: log steps (nil without steps), log seconds per step
    /// and the record's index; logs taken once here rather than on every read.
    private let profiled: [[(logSteps: Double?, logStepSeconds: Double, record: Int)]]
    private let durations: [Sample]
    /// Mean and variance of each stage's durations.
    private let moments: [(mean: Double, variance: Double)]
    private let tails: [Sample]
    private let stepSeconds: [Sample]
    private let stageSeconds: [Sample]
    private let drifts: [Sample]
    /// Stage 0 durations of the newest `recentQueueRecords` records, sorted.
    let recentFirstStage: Sample

    /// Statistics of one made-up run with every part a record can have (a stepped stage with its tail and drift,
    /// a stage without steps, a workload, a variant): what builds the metadata of the types the ETA uses, so a
    /// fork handler can have it done before the fork (`ForkRegistry.warmRuntime`).
    @inline(never)
    static func warm() -> Int {
        let stepped = StageProfile(steps: 30, head: 1, stepSeconds: 0.1, tail: 0.5, drift: 0.1)
        let whole = StageProfile(steps: nil, head: 0, stepSeconds: 2, tail: nil)
        let record = CompletionRecord(taskId: "warm", templateId: "warm", category: nil, quality: nil,
                                      stageDurations: [(0, 1), (1, 4), (2, 2)], profiles: [1: stepped, 2: whole],
                                      totalDuration: 7, resourceConfig: nil, timestamp: 0,
                                      workload: Workload(metadata: nil), stageVariants: [0: "cold"])
        return HistoryStatistics(records: [record, record]).count
    }

    /// - Parameter records: the set, oldest first.
    init(records: [CompletionRecord]) {
        self.records = records
        count = records.count
        var durations: [[Double]] = [], tails: [[Double]] = []
        var stepSeconds: [[Double]] = [], stageSeconds: [[Double]] = [], drifts: [[Double]] = []
        var profiled: [[(logSteps: Double?, logStepSeconds: Double, record: Int)]] = []
        func add<T>(_ value: T, at index: Int, to lists: inout [[T]]) {
            while lists.count <= index { lists.append([]) }
            lists[index].append(value)
        }
        for (i, record) in records.enumerated() {
            for (index, seconds) in record.stageDurations { add(seconds, at: index, to: &durations) }
            for (index, profile) in record.profiles {
                add((profile.steps.map { log(Double($0)) }, log(max(profile.stepSeconds, 1e-9)), i), at: index,
                    to: &profiled)
                if let tail = profile.tail { add(tail, at: index, to: &tails) }
                if let drift = profile.drift { add(drift, at: index, to: &drifts) }
                if profile.steps != nil {
                    add(profile.stepSeconds, at: index, to: &stepSeconds)
                } else {
                    add(profile.stepSeconds, at: index, to: &stageSeconds)
                }
            }
        }
        func sorted(_ lists: [[Double]]) -> [Sample] { lists.map { Sample(sorted: $0.sorted()) } }
        self.durations = sorted(durations)
        moments = durations.map { values in
            guard !values.isEmpty else { return (0, 0) }
            let mean = values.reduce(0, +) / Double(values.count)
            return (mean, values.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / Double(values.count))
        }
        self.tails = sorted(tails)
        self.stepSeconds = sorted(stepSeconds)
        self.stageSeconds = sorted(stageSeconds)
        self.drifts = sorted(drifts)
        self.profiled = profiled
        let recent = records.suffix(HistoryStatistics.recentQueueRecords).compactMap { record in
            record.stageDurations.first(where: { $0.0 == 0 })?.1
        }
        recentFirstStage = Sample(sorted: recent.sorted())
    }

    private static let empty = Sample(sorted: [])

    private static func at(_ list: [Sample], _ index: Int) -> Sample {
        index >= 0 && index < list.count ? list[index] : empty
    }

    /// Durations of stage `index` (seconds).
    func durations(_ index: Int) -> Sample { HistoryStatistics.at(durations, index) }
    /// Mean and variance of the durations of stage `index`; nil when it has none.
    func moments(_ index: Int) -> (mean: Double, variance: Double)? {
        index >= 0 && index < moments.count && !durations[index].isEmpty ? moments[index] : nil
    }
    /// Seconds stage `index` went on after its progress reached 1.
    func tails(_ index: Int) -> Sample { HistoryStatistics.at(tails, index) }
    /// Robust seconds per step of stage `index`, from runs that reported steps.
    func stepSeconds(_ index: Int) -> Sample { HistoryStatistics.at(stepSeconds, index) }
    /// Robust seconds per whole stage at the stepping pace, from runs that reported progress without steps.
    func stageSeconds(_ index: Int) -> Sample { HistoryStatistics.at(stageSeconds, index) }
    /// How the pace of stage `index` changed with its progress (`StageProfile.drift`), from runs long enough to say.
    func drifts(_ index: Int) -> Sample { HistoryStatistics.at(drifts, index) }

    /// The statistics of the records most like a run whose stage `stage` reports `steps` steps (0: progress
    /// without steps) at `stepSeconds` per step: the ⌈√n⌉ (at least 5) nearest in log steps and log pace.
    /// What follows a stage (a decode, post-processing, encoding) grows with the size of the job, which its step
    /// count and its pace per step show once it reports: a 64-tile upscale encodes longer than a 4-tile one.
    /// - Parameters:
    ///   - stage: the stage that reports progress.
    ///   - steps: its total_steps, 0 when it reports progress without steps.
    ///   - stepSeconds: its live pace per step, nil while unknown.
    /// - Returns: nil when fewer records than that have a profile of the stage.
    func similar(stage: Int, steps: Int64, stepSeconds: Double?) -> HistoryStatistics? {
        guard stage >= 0 && stage < profiled.count else { return nil }
        let logSteps = steps > 0 ? log(Double(steps)) : nil
        let logStepSeconds = stepSeconds.flatMap { $0 > 0 ? log($0) : nil }
        var scored: [(distance: Double, index: Int)] = []
        scored.reserveCapacity(profiled[stage].count)
        for candidate in profiled[stage] where (candidate.logSteps == nil) == (logSteps == nil) {
            var distance = 0.0
            if let a = candidate.logSteps, let b = logSteps { distance += abs(a - b) }
            if let logStepSeconds { distance += abs(candidate.logStepSeconds - logStepSeconds) }
            scored.append((distance, candidate.record))
        }
        let k = max(5, Int(Double(scored.count).squareRoot().rounded(.up)))
        guard scored.count >= k else { return nil }
        scored.sort { $0.distance < $1.distance }
        return HistoryStatistics(records: scored.prefix(k).map(\.index).sorted().map { records[$0] })
    }

    /// The statistics of the records whose stage `stage` ran as the runner says this one does (`StageState.variant`):
    /// a cold model load is another distribution than a warm one, not its spread.
    /// - Returns: nil when fewer than `CompletionHistory.minimumRecords` records have that variant.
    func variant(stage: Int, _ name: String) -> HistoryStatistics? {
        let matching = records.filter { $0.stageVariants[stage] == name }
        return matching.count >= CompletionHistory.minimumRecords ? HistoryStatistics(records: matching) : nil
    }

    /// The statistics of the 5√n records nearest in size among those that gave the same workload names as
    /// `workload` (`SizeScaling.neighbourhood`), each record's stage durations, tails (what follows the last step)
    /// and paces per step moved to the target's size along a power law fitted over all of those records
    /// (`SizeScaling`): log duration = a + Σ b × log value. Where a job's stages grow with its size, this predicts
    /// them from several times more runs than the √n nearest taken as they were: the spread of a stage that
    /// varies from run to run (a post-processing or an encoding) is known from many runs, its rare long ones
    /// included, instead of a handful. A stage that does not follow the size (a model load) gets slopes near 0
    /// and is left as it was.
    /// - Parameter workload: the task's size, as its runner gave it at creation.
    /// - Returns: nil when fewer than `SizeScaling.minimumRecords` records gave comparable sizes.
    func scaled(to workload: Workload) -> HistoryStatistics? {
        guard let scaling = SizeScaling(records, names: workload.names) else { return nil }
        let nearest = max(5, Int(SizeScaling.neighbourhood * Double(records.count).squareRoot()))
        return HistoryStatistics(records: scaling.records(scaledTo: workload, nearest: nearest))
    }

    /// The statistics of the records of runs closest in size to `workload` (`Workload.distance`), among those
    /// that gave the same names: the ⌈√n⌉ (at least 5) nearest, the newest first among equal distances. Every stage
    /// of a generation job, and the wait of those queued behind it, follows the job's size: a 50-step 2.4 MP image
    /// takes six times a 20-step 0.6 MP one on the same GPU, which template + quality + resources alone cannot tell.
    /// - Parameter workload: the task's size, as its runner gave it at creation.
    /// - Returns: nil when fewer than `CompletionHistory.minimumRecords` records gave a comparable size.
    func similar(workload: Workload) -> HistoryStatistics? {
        var scored: [(distance: Double, index: Int)] = []
        for (i, record) in records.enumerated() {
            if let other = record.workload, let distance = workload.distance(to: other) { scored.append((distance, i)) }
        }
        guard scored.count >= CompletionHistory.minimumRecords else { return nil }
        let k = min(scored.count, max(5, Int(Double(scored.count).squareRoot().rounded(.up))))
        scored.sort { $0.distance < $1.distance || ($0.distance == $1.distance && $0.index > $1.index) }
        return HistoryStatistics(records: scored.prefix(k).map(\.index).sorted().map { records[$0] })
    }
}
