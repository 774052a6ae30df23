import Glibc

/// How the figures of each stage follow the job's size (`Workload`) over a set of completion records: a power
/// law, log figure = a + Σ b × log value, fitted by least squares on the records that gave the same names. It moves
/// each record to another size (`records(scaledTo:)`), so that many runs of a group, not only the few nearest in
/// size, tell what a job of that size would have taken: its own deviation from the law is kept, only the size is
/// changed. Durations, what follows a stage's last step (`StageProfile.tail`) and paces per step are fitted apart:
/// a decode follows the resolution, a pace per step does not follow the step count. A stage that reported steps is
/// moved as the sum of its warm-up, its steps and its tail, each by its own law: a warm-up does not grow with the
/// job, so a power law of the whole stage would shrink a 1-tile upscale, which is mostly warm-up.
///
/// The fit is ridge-regularised (a slope whose name never varies in the set is 0, two names that always vary
/// together share one slope) and slopes are bounded, so that a few odd records cannot make sizes far from theirs
/// absurd.
struct SizeScaling: Sendable {
    /// The records moved to a size are the neighbourhood × √n nearest to it (`records(scaledTo:nearest:)`): a law
    /// of growth holds near a size better than far from it (a warm-up that does not grow, tiles rounded up), and
    /// 5√n is several times the √n runs the nearest sizes gave unscaled. Tried on bench-eta: all the records
    /// served video and image at 90 % a little better (7.52 / 13.84 against 7.63 / 13.95) and upscale worse
    /// (90 %: 24.1 against 22.5); 10√n and n / 2 fell between.
    static let neighbourhood = 5.0
    /// Records a fit needs: fewer say too little about how a figure grows.
    static let minimumRecords = 8
    /// The ridge per record, against the centred squares of the log sizes: enough to keep the equations solvable
    /// when a name never varies or two always vary together, too little to bend a real slope (a spread of ±0.1 %
    /// in a name's value already outweighs it).
    static let ridge = 1e-6
    /// |slope| at most: a figure growing as the cube of a size is already far beyond any generation job.
    static let maxSlope = 3.0

    /// The records that gave the names, oldest first, and the logs of their values (in the order of the names).
    private let records: [CompletionRecord]
    private let logs: [[Double]]
    /// Slopes per stage index, one per name; a stage without a fit is absent (factor 1).
    private let durationSlopes: [Int: [Double]]
    private let headSlopes: [Int: [Double]]
    private let bodySlopes: [Int: [Double]]
    private let tailSlopes: [Int: [Double]]
    private let stepSlopes: [Int: [Double]]

    /// Fits the laws over the records whose workload gives exactly `names`.
    /// - Returns: nil when fewer than `minimumRecords` records do.
    init?(_ all: [CompletionRecord], names: [String]) {
        var records: [CompletionRecord] = [], logs: [[Double]] = []
        for record in all {
            guard let workload = record.workload, workload.names == names else { continue }
            records.append(record)
            logs.append(workload.values.map { log($0.1) })
        }
        guard records.count >= SizeScaling.minimumRecords else { return nil }
        var durations: [Int: [([Double], Double)]] = [:], tails: [Int: [([Double], Double)]] = [:]
        var steps: [Int: [([Double], Double)]] = [:], heads: [Int: [([Double], Double)]] = [:]
        var bodies: [Int: [([Double], Double)]] = [:]
        for (record, x) in zip(records, logs) {
            // Zero figures (a stage skipped) say nothing of a law of growth and stay zero when scaled.
            for (index, seconds) in record.stageDurations where seconds > 0 {
                durations[index, default: []].append((x, log(seconds)))
                if let profile = record.profiles[index] {
                    let body = SizeScaling.body(seconds, profile)
                    if body > 0 { bodies[index, default: []].append((x, log(body))) }
                }
            }
            for (index, profile) in record.profiles {
                let head = SizeScaling.warmUp(profile)
                if head > 0 { heads[index, default: []].append((x, log(head))) }
                if let tail = profile.tail, tail > 0 { tails[index, default: []].append((x, log(tail))) }
                if profile.stepSeconds > 0 { steps[index, default: []].append((x, log(profile.stepSeconds))) }
            }
        }
        func fit(_ points: [Int: [([Double], Double)]]) -> [Int: [Double]] {
            points.compactMapValues { SizeScaling.slopes($0, dimension: names.count) }
        }
        self.records = records
        self.logs = logs
        durationSlopes = fit(durations)
        headSlopes = fit(heads)
        bodySlopes = fit(bodies)
        tailSlopes = fit(tails)
        stepSlopes = fit(steps)
    }

    /// The least-squares slopes of y on x (both centred), ridge-regularised and bounded; nil for too few points.
    static func slopes(_ points: [([Double], Double)], dimension m: Int) -> [Double]? {
        guard points.count >= minimumRecords, m > 0 else { return nil }
        let n = Double(points.count)
        var meanX = [Double](repeating: 0, count: m), meanY = 0.0
        for (x, y) in points {
            for i in 0..<m { meanX[i] += x[i] / n }
            meanY += y / n
        }
        // Normal equations (XᵀX + λ I) b = Xᵀy, augmented as an m × (m + 1) matrix.
        var a = [[Double]](repeating: [Double](repeating: 0, count: m + 1), count: m)
        for (x, y) in points {
            for i in 0..<m {
                let xi = x[i] - meanX[i]
                for j in 0..<m { a[i][j] += xi * (x[j] - meanX[j]) }
                a[i][m] += xi * (y - meanY)
            }
        }
        for i in 0..<m { a[i][i] += ridge * n }
        // Gaussian elimination: the matrix is symmetric positive definite, so no pivoting is needed.
        for k in 0..<m {
            let pivot = a[k][k]
            for i in (k + 1)..<m {
                let f = a[i][k] / pivot
                for j in k...m { a[i][j] -= f * a[k][j] }
            }
        }
        var b = [Double](repeating: 0, count: m)
        for k in stride(from: m - 1, through: 0, by: -1) {
            var sum = a[k][m]
            for j in (k + 1)..<m { sum -= a[k][j] * b[j] }
            b[k] = sum / a[k][k]
        }
        guard b.allSatisfy(\.isFinite) else { return nil }
        return b.map { min(max($0, -maxSlope), maxSlope) }
    }

    /// The time before a stepped stage's first report less its first step: the warm-up, which does not grow with
    /// the job (`StageProfile.head` holds the first step too).
    private static func warmUp(_ profile: StageProfile) -> Double {
        profile.steps == nil ? profile.head : max(0, profile.head - profile.stepSeconds)
    }

    /// The steps of a stepped stage, the first one included: its duration less the warm-up and what follows the
    /// last step. A 1-tile upscale is one step, not nothing: its steps then scale with the tiles from 1 on.
    private static func body(_ seconds: Double, _ profile: StageProfile) -> Double {
        max(0, seconds - warmUp(profile) - (profile.tail ?? 0))
    }

    /// The records, each moved from its own size to `workload`'s (which must give the same names).
    /// - Parameter limit: keep only this many, the nearest in size (sum of |log ratio|, the newest first among
    ///   equal distances), as `HistoryStatistics.similar(workload:)` picks them; nil for all.
    func records(scaledTo workload: Workload, nearest limit: Int? = nil) -> [CompletionRecord] {
        let target = workload.values.map { log($0.1) }
        var chosen = Array(records.indices)
        if let limit, limit < records.count {
            func distance(_ i: Int) -> Double { zip(logs[i], target).reduce(0) { $0 + abs($1.0 - $1.1) } }
            let scored = chosen.map { (distance($0), $0) }.sorted { $0.0 < $1.0 || ($0.0 == $1.0 && $0.1 > $1.1) }
            chosen = scored.prefix(limit).map(\.1).sorted()
        }
        return chosen.map { (records[$0], logs[$0]) }.map { record, x in
            func factor(_ slopes: [Double]?) -> Double {
                guard let slopes else { return 1 }
                var exponent = 0.0
                for i in slopes.indices { exponent += slopes[i] * (target[i] - x[i]) }
                return exp(exponent)
            }
            var scaled = record
            scaled.stageDurations = record.stageDurations.map { index, seconds in
                // A stage that reported steps: its warm-up before the first report, its steps and what follows
                // the last one each grow by their own law (a 1-tile upscale is mostly warm-up, which a power law
                // of the whole stage fitted on 40-tile jobs would shrink with the tiles).
                guard let profile = record.profiles[index], bodySlopes[index] != nil else {
                    return (index, seconds * factor(durationSlopes[index]))
                }
                let tail = profile.tail ?? 0
                return (index, SizeScaling.warmUp(profile) * factor(headSlopes[index])
                            + SizeScaling.body(seconds, profile) * factor(bodySlopes[index])
                            + tail * factor(tailSlopes[index]))
            }
            for (index, profile) in record.profiles {
                var moved = profile
                moved.stepSeconds *= factor(stepSlopes[index])
                moved.tail = profile.tail.map { $0 * factor(tailSlopes[index]) }
                scaled.profiles[index] = moved
            }
            return scaled
        }
    }
}
