// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "ProgressEngine",
    products: [
        // The product everything else loads: libProgressEngine.so with the C ABI of include/progress.h.
        .library(name: "ProgressEngine", type: .dynamic, targets: ["ProgressEngine"]),
    ],
    targets: [
        // C shims: what Swift cannot express (thread-local storage with C lifetime, relaxed atomic loads
        // of caller-owned memory). Symbols are prefixed CProgress_.
        .target(name: "CProgress", path: "Sources/CProgress"),
        .target(
            name: "ProgressEngine",
            dependencies: ["CProgress"],
            path: "Sources/ProgressEngine",
            swiftSettings: [
                // The hot path is measured in nanoseconds; exclusivity checks on every table access
                // cost more than the update itself. All shared state is guarded by Mutex.
                .unsafeFlags(["-enforce-exclusivity=unchecked"]),
            ]
        ),
        .testTarget(name: "ProgressEngineTests", dependencies: ["ProgressEngine"], path: "Tests/ProgressEngineTests"),
    ]
)
