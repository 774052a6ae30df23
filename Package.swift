// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "ProgressEngine",
    products: [
        // The product everything else loads: libProgressEngine.so with the C ABI of include/progress.h.
        .library(name: "ProgressEngine", type: .dynamic, targets: ["ProgressEngine"]),
        .executable(name: "progress-server", targets: ["ProgressServer"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
    ],
    targets: [
        // C shims: what Swift cannot express (thread-local storage with C lifetime, relaxed atomics on
        // caller-owned memory, libwebsockets' macros and callback, libpng's simplified API). Symbols are prefixed CProgress_.
        .systemLibrary(
            name: "CLibwebsockets",
            path: "Sources/CLibwebsockets",
            pkgConfig: "libwebsockets",
            providers: [.apt(["libwebsockets-dev"])]
        ),
        .systemLibrary(
            name: "CLibpng",
            path: "Sources/CLibpng",
            pkgConfig: "libpng",
            providers: [.apt(["libpng-dev"])]
        ),
        // Redis write-through (Sources/ProgressEngine/Storage): only hiredis' argv functions are used, so no
        // varargs cross into Swift and no shim is needed.
        .systemLibrary(
            name: "CLibhiredis",
            path: "Sources/CLibhiredis",
            pkgConfig: "hiredis",
            providers: [.apt(["libhiredis-dev"])]
        ),
        .target(name: "CProgress", dependencies: ["CLibwebsockets", "CLibpng"], path: "Sources/CProgress",
                linkerSettings: [.linkedLibrary("uv"), .linkedLibrary("z")]),
        .target(
            name: "ProgressEngine",
            dependencies: ["CProgress", "CLibhiredis"],
            path: "Sources/ProgressEngine"
        ),
        .executableTarget(
            name: "ProgressServer",
            dependencies: [
                "ProgressEngine",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Sources/ProgressServer"
        ),
        .testTarget(name: "ProgressEngineTests", dependencies: ["ProgressEngine"], path: "Tests/ProgressEngineTests"),
    ]
)
