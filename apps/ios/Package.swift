// swift-tools-version:5.9
// RapsamKit: the host code (Host.swift, pure Foundation) + the CoreML graphs (Models.swift) + the generated
// BundleConstants.swift. RapsamDemoUI: the SwiftUI screen, with the bundle's packages and manifest as resources.
// Both the constants and the resources come from `python apps/ios/generate_constants.py BUNDLE`.
import PackageDescription

let package = Package(
    name: "RapsamDemo",
    platforms: [.iOS(.v16), .macOS(.v13)],
    products: [
        .library(name: "RapsamKit", targets: ["RapsamKit"]),
        .library(name: "RapsamDemoUI", targets: ["RapsamDemoUI"]),
    ],
    targets: [
        .target(name: "RapsamKit"),
        .target(name: "RapsamDemoUI", dependencies: ["RapsamKit"], resources: [.copy("Resources")]),
    ]
)
