/// Observed values (durations, paces) sorted ascending, with the order statistics the ETA uses.
struct Sample: Sendable {
    let values: [Double]

    /// - Parameter sorted: values in ascending order.
    init(sorted: [Double]) {
        values = sorted
    }

    var count: Int { values.count }
    var isEmpty: Bool { values.isEmpty }

    /// The q-quantile (0...1), interpolating linearly between closest ranks; 0 for an empty sample.
    func quantile(_ q: Double) -> Double {
        guard !values.isEmpty else { return 0 }
        let position = Double(values.count - 1) * q
        let low = Int(position.rounded(.down))
        let high = min(low + 1, values.count - 1)
        return values[low] + (values[high] - values[low]) * (position - Double(low))
    }

    var median: Double { quantile(0.5) }

    /// A robust standard deviation: the 10-90 % range over that of a normal distribution. Wider than the
    /// interquartile range on purpose, so that a minority mode (cold model loads) shows in it.
    var spread: Double { (quantile(0.9) - quantile(0.1)) / 2.563 }

    /// The point estimate of a duration drawn like the sample, as one part of a remaining time whose other parts
    /// add up to `other` seconds. ETAs are judged relative to the time left (a 10 s miss matters on a 20 s wait,
    /// not on an hour's, and not below a second), so the estimate is the value that minimizes the expected relative
    /// error of the whole: the median of the values, each weighted by 1 / max(value + other, 1 s). A part that is
    /// most of the whole thus leans toward its shorter values, a small part among long ones gets its plain median
    /// (`other` = ∞). While values are few, it is moved toward the seed's conservative 75th percentile (the gap
    /// shrinks as 1/√n).
    /// - Parameter other: seconds of the rest of the remaining time; `.infinity` for the plain median.
    /// - Returns: seconds; 0 for an empty sample.
    func central(besides other: Double) -> Double {
        guard !values.isEmpty else { return 0 }
        var m = median
        if other.isFinite {
            func weight(_ v: Double) -> Double { 1 / max(v + other, 1) }
            let half = values.reduce(0) { $0 + weight($1) } / 2
            var sum = 0.0
            for v in values {
                sum += weight(v)
                if sum >= half {
                    m = v
                    break
                }
            }
        }
        return m + (quantile(0.75) - m) / Double(values.count).squareRoot()
    }

    /// The values still possible after `elapsed` seconds, less `elapsed`: what remains of a duration under way.
    /// A duration still under way after `elapsed` > 0 is longer than that, so values equal to it are out too.
    /// Empty when every value was shorter.
    func remaining(after elapsed: Double) -> [Double] {
        var low = 0, high = values.count
        while low < high {
            let mid = (low + high) / 2
            if values[mid] < elapsed || (elapsed > 0 && values[mid] == elapsed) { low = mid + 1 } else { high = mid }
        }
        return values[low...].map { $0 - elapsed }
    }
}
