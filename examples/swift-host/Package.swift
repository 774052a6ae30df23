// swift-tools-version:6.0
// A Swift host that embeds ProgressEngine as any package dependency: by version, from its git repository.
import Foundation
import PackageDescription

// Where the ProgressEngine repository is: PROGRESS_ENGINE_PACKAGE_URL, else the repository this example sits in
// (two folders up), read as a git repository with its version tags like any remote one.
let engineURL = ProcessInfo.processInfo.environment["PROGRESS_ENGINE_PACKAGE_URL"]
    ?? "file://" + URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().path
// SwiftPM names a package by the last component of its URL (progress-engine for the project's repository).
let engineIdentity = URL(fileURLWithPath: engineURL).deletingPathExtension().lastPathComponent.lowercased()

let package = Package(
    name: "swift-host",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(url: engineURL, from: "0.1.0"),
    ],
    targets: [
        .executableTarget(
            name: "SwiftHost",
            dependencies: [.product(name: "ProgressEngine", package: engineIdentity)],
            path: "Sources/SwiftHost"
        ),
    ]
)
