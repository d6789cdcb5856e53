// The app entry point: add this file to an Xcode iOS App target that depends on the local package apps/ios
// (product RapsamDemoUI); see apps/ios/README.md.
import RapsamDemoUI
import SwiftUI

@main
struct RapsamDemoApp: App {
    var body: some Scene {
        WindowGroup { DemoView() }
    }
}
