// SwiftUI demo: pick a photo (encoder runs once), tap to segment (prompt decoder; with "add" on, taps accumulate
// and all points go to the prompt decoder in one call), "Panoptic" runs the object decoder and labels segments.
#if canImport(UIKit)
import CoreML
import PhotosUI
import RapsamKit
import SwiftUI
import UIKit

@MainActor
public final class DemoModel: ObservableObject {
    @Published public var rendered: UIImage?
    @Published public var status = "pick a photo"
    @Published public var addObjects = false
    private var models: RapsamModels?
    private var rgb: [UInt8] = []
    private var letterbox: Letterbox?
    private var encoded: Encoded?
    private var points: [(Double, Double)] = []

    public init() {
        do {
            let resources = Bundle.module.resourceURL!.appendingPathComponent("Resources")
            models = try RapsamModels(resources: resources)
            status = "\(BundleConstants.bundleName) (\(BundleConstants.precision)) · pick a photo"
        } catch {
            status = "\(error)"
        }
    }

    public func setImage(_ image: UIImage) {
        guard let models, let decoded = rgbBytes(image) else { return }
        let (pixels, h, w) = decoded
        let t0 = Date()
        let prepared: (tensor: [Float], letterbox: Letterbox)
        do {
            prepared = try preprocess(rgb: pixels, height: h, width: w)  // throws when the image does not fit
            encoded = try models.encode(prepared.tensor)
        } catch {
            status = "\(error)"
            return
        }
        rgb = pixels
        letterbox = prepared.letterbox
        points = []
        render(ids: [Int32](repeating: 0, count: h * w))
        status = String(format: "%dx%d · encoder %.0f ms · tap an object", w, h, Date().timeIntervalSince(t0) * 1000)
    }

    /// (x, y) in original-image pixels.
    public func tap(x: Double, y: Double) {
        guard let models, let encoded, let lb = letterbox else { return }
        let t0 = Date()
        points = addObjects ? points + [(x, y)] : [(x, y)]
        do {
            let (logits, _) = try models.decodePrompts(encoded, boxes: pointsToBoxes(points, lb))
            let masks = masksFromLogits(logits, count: points.count, lb)
            var ids = [Int32](repeating: 0, count: lb.origH * lb.origW)
            for (k, mask) in masks.enumerated() { for i in mask.indices where mask[i] { ids[i] = Int32(k + 1) } }
            render(ids: ids)
            status = String(format: "K=%d · %.0f ms per tap (decoder + drawing)", points.count,
                            Date().timeIntervalSince(t0) * 1000)
        } catch {
            status = "\(error)"
        }
    }

    public func panoptic() {
        guard let models, let encoded, let lb = letterbox else { return }
        let t0 = Date()
        do {
            let (cls, masks) = try models.decodeObjects(encoded)
            let (ids, segments) = panopticMerge(cls: cls, masks: masks, lb)
            render(ids: ids, labels: segments.map { s in (s.name, centroid(ids, Int32(s.id), lb.origW)) })
            status = String(format: "%d segments · %.0f ms", segments.count, Date().timeIntervalSince(t0) * 1000)
        } catch {
            status = "\(error)"
        }
    }

    private func render(ids: [Int32], labels: [(String, CGPoint)] = []) {
        guard let lb = letterbox else { return }
        var rgba = overlay(rgb: rgb, ids: ids)
        let image = rgba.withUnsafeMutableBytes { buf -> CGImage? in
            CGContext(data: buf.baseAddress, width: lb.origW, height: lb.origH, bitsPerComponent: 8,
                      bytesPerRow: lb.origW * 4, space: CGColorSpaceCreateDeviceRGB(),
                      bitmapInfo: CGImageAlphaInfo.noneSkipLast.rawValue)?.makeImage()
        }
        guard let image else { return }
        let size = CGSize(width: lb.origW, height: lb.origH)
        let format = UIGraphicsImageRendererFormat()
        format.scale = 1
        rendered = UIGraphicsImageRenderer(size: size, format: format).image { _ in
            UIImage(cgImage: image).draw(at: .zero)
            let attrs: [NSAttributedString.Key: Any] = [
                .font: UIFont.boldSystemFont(ofSize: max(12, CGFloat(lb.origW) / 60)), .foregroundColor: UIColor.white,
                .strokeColor: UIColor.black, .strokeWidth: -3,
            ]
            for (text, at) in labels { (text as NSString).draw(at: at, withAttributes: attrs) }
            UIColor.red.setFill()
            for (x, y) in points { UIBezierPath(ovalIn: CGRect(x: x - 3.5, y: y - 3.5, width: 7, height: 7)).fill() }
        }
    }
}

private func centroid(_ ids: [Int32], _ id: Int32, _ width: Int) -> CGPoint {
    var sx = 0, sy = 0, n = 0
    for i in ids.indices where ids[i] == id { sx += i % width; sy += i / width; n += 1 }
    return CGPoint(x: Double(sx) / Double(max(n, 1)), y: Double(sy) / Double(max(n, 1)))
}

/// RGB bytes of a photo as Pillow would read them: orientation applied, no colour conversion when the photo is
/// already RGB (its own colour space is kept), alpha dropped.
func rgbBytes(_ image: UIImage) -> ([UInt8], Int, Int)? {
    var cg = image.cgImage
    if image.imageOrientation != .up {  // bake the orientation in (this redraw converts to sRGB)
        let format = UIGraphicsImageRendererFormat()
        format.scale = 1
        cg = UIGraphicsImageRenderer(size: image.size, format: format).image { _ in image.draw(at: .zero) }.cgImage
    }
    guard let cg else { return nil }
    let w = cg.width, h = cg.height
    let space = cg.colorSpace?.model == .rgb ? cg.colorSpace! : CGColorSpaceCreateDeviceRGB()
    var rgba = [UInt8](repeating: 0, count: w * h * 4)
    let ok = rgba.withUnsafeMutableBytes { buf -> Bool in
        guard let ctx = CGContext(data: buf.baseAddress, width: w, height: h, bitsPerComponent: 8, bytesPerRow: w * 4,
                                  space: space, bitmapInfo: CGImageAlphaInfo.noneSkipLast.rawValue) else { return false }
        ctx.draw(cg, in: CGRect(x: 0, y: 0, width: w, height: h))
        return true
    }
    guard ok else { return nil }
    var rgb = [UInt8](repeating: 0, count: w * h * 3)
    for i in 0..<(w * h) { rgb[i * 3] = rgba[i * 4]; rgb[i * 3 + 1] = rgba[i * 4 + 1]; rgb[i * 3 + 2] = rgba[i * 4 + 2] }
    return (rgb, h, w)
}

public struct DemoView: View {
    @StateObject private var model = DemoModel()
    @State private var item: PhotosPickerItem?

    public init() {}

    public var body: some View {
        VStack(spacing: 8) {
            HStack {
                PhotosPicker("Photo", selection: $item, matching: .images)
                Toggle("Add objects", isOn: $model.addObjects).fixedSize()
                Button("Panoptic") { model.panoptic() }
            }
            Text(model.status).font(.caption).lineLimit(2)
            if let image = model.rendered {
                Image(uiImage: image).resizable().scaledToFit()
                    .overlay(GeometryReader { geo in
                        Color.clear.contentShape(Rectangle()).gesture(SpatialTapGesture().onEnded { tap in
                            // the overlay has the fitted image's frame: scale the tap back to image pixels
                            let x = tap.location.x / geo.size.width * image.size.width
                            let y = tap.location.y / geo.size.height * image.size.height
                            model.tap(x: min(max(x, 0), image.size.width - 0.001), y: min(max(y, 0), image.size.height - 0.001))
                        })
                    })
            }
            Spacer()
        }
        .padding()
        .onChange(of: item) { newItem in
            Task {
                if let data = try? await newItem?.loadTransferable(type: Data.self), let image = UIImage(data: data) {
                    model.setImage(image)
                }
            }
        }
    }
}
#endif
