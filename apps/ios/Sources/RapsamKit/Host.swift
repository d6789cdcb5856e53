// The host half of the graph contract (design.md §3) in Swift: a port of rapsam_edge/preprocess.py and
// postprocess.py (letterbox with "longest" or keep-ratio resize on the packages' fixed canvas, the official two-step
// mask resize composed into one resampling, the panoptic merge with an unclipped float32 sigmoid), the same as
// apps/web/host.js (whose exactness tests/test_app_web.py checks). Every number
// comes from BundleConstants, generated from the bundle manifest by apps/ios/generate_constants.py.
import Foundation

/// One graph's CoreML package (resource name without extension) and its IO names in the contract's order.
public struct GraphSpec {
    public let resource: String
    public let inputs: [String]
    public let outputs: [String]
}

/// An image the fixed canvas cannot hold (a keep-ratio resize larger than the graph input), as compute_letterbox refuses.
public struct LetterboxError: Error, CustomStringConvertible {
    public let description: String
}

/// preprocess.Letterbox: original image -> resized (aspect kept) -> padded bottom/right to the graph input.
public struct Letterbox {
    public let origH: Int, origW: Int
    public let resizedH: Int, resizedW: Int
    public let paddedH: Int, paddedW: Int
    public let scaleX: Double, scaleY: Double  // resized / original, per axis
    public let promptH: Int, promptW: Int      // what click boxes are normalised by
    public var featureH: Int { paddedH / 4 }
    public var featureW: Int { paddedW / 4 }

    /// compute_letterbox on the fixed canvas (inputHeight x inputWidth) of the CoreML packages. resize "longest":
    /// factor min(H/h0, W/w0), sides capped at the canvas; "keep_ratio": mmcv's rule for scale (long, short),
    /// factor min(long/max(h0, w0), short/min(h0, w0)). Sides floor(side * factor + 0.5), at least 1 (mmcv's
    /// rounding). A keep-ratio image larger than the canvas is refused. (The generator refuses the "divisor"
    /// canvas: fixed-shape packages take one size.)
    public init(origH: Int, origW: Int) throws {
        precondition(origH > 0 && origW > 0, "image size must be positive")
        let ph = BundleConstants.inputHeight, pw = BundleConstants.inputWidth
        func roundHalfUp(_ x: Double) -> Int { max(1, Int((x + 0.5).rounded(.down))) }
        let rh: Int, rw: Int
        if BundleConstants.resize == "keep_ratio" {
            let longEdge = Double(max(BundleConstants.scaleLong, BundleConstants.scaleShort))
            let shortEdge = Double(min(BundleConstants.scaleLong, BundleConstants.scaleShort))
            let factor = min(longEdge / Double(max(origH, origW)), shortEdge / Double(min(origH, origW)))
            rh = roundHalfUp(Double(origH) * factor)
            rw = roundHalfUp(Double(origW) * factor)
        } else {
            let factor = min(Double(ph) / Double(origH), Double(pw) / Double(origW))
            rh = min(ph, roundHalfUp(Double(origH) * factor))
            rw = min(pw, roundHalfUp(Double(origW) * factor))
        }
        if rh > ph || rw > pw {
            throw LetterboxError(description: "a \(origW)x\(origH) (WxH) image resized to \(rw)x\(rh) does not fit "
                                 + "the fixed \(pw)x\(ph) canvas.")
        }
        self.origH = origH
        self.origW = origW
        resizedH = rh
        resizedW = rw
        paddedH = ph
        paddedW = pw
        scaleX = Double(rw) / Double(origW)
        scaleY = Double(rh) / Double(origH)
        let padded = BundleConstants.promptFrame == "padded"
        promptH = padded ? ph : rh
        promptW = padded ? pw : rw
    }
}

// MARK: - resize (Pillow's Resample.c, 8 bits per channel, 22-bit fixed-point coefficients)

private let precisionBits = 22

private func pillowFilter(_ x: Double) -> Double {
    let x = abs(x)
    if BundleConstants.interpolation == "bicubic" {
        let a = -0.5
        if x < 1.0 { return ((a + 2.0) * x - (a + 3.0)) * x * x + 1 }
        if x < 2.0 { return (((x - 5) * x + 8) * x - 4) * a }
        return 0.0
    }
    return x < 1.0 ? 1.0 - x : 0.0  // bilinear
}

private struct Coefficients {
    let ksize: Int
    var bounds: [Int]  // (xmin, count) per output sample
    var kk: [Int]
}

private func pillowCoefficients(inSize: Int, outSize: Int) -> Coefficients {
    let support0 = BundleConstants.interpolation == "bicubic" ? 2.0 : 1.0
    let scale = Double(inSize) / Double(outSize)
    let filterscale = max(scale, 1.0)
    let support = support0 * filterscale
    let ksize = Int(support.rounded(.up)) * 2 + 1
    var c = Coefficients(ksize: ksize, bounds: [Int](repeating: 0, count: outSize * 2),
                         kk: [Int](repeating: 0, count: outSize * ksize))
    var w = [Double](repeating: 0, count: ksize)
    let ss = 1.0 / filterscale
    for xx in 0..<outSize {
        let center = (Double(xx) + 0.5) * scale
        let xmin = max(0, Int(center - support + 0.5))
        let xmax = min(inSize, Int(center + support + 0.5)) - xmin
        var ww = 0.0
        for x in 0..<xmax {
            w[x] = pillowFilter((Double(x + xmin) - center + 0.5) * ss)
            ww += w[x]
        }
        for x in 0..<xmax {
            let v = ww != 0 ? w[x] / ww : w[x]
            let f = v * Double(1 << precisionBits)
            c.kk[xx * ksize + x] = Int(v < 0 ? -0.5 + f : 0.5 + f)  // Int() truncates like C's (int)
        }
        c.bounds[xx * 2] = xmin
        c.bounds[xx * 2 + 1] = xmax
    }
    return c
}

@inline(__always) private func clip8(_ v: Int) -> UInt8 {
    let s = v >> precisionBits
    return UInt8(max(0, min(255, s)))
}

/// RGB bytes (h, w) -> (nh, nw) with Pillow's two-pass resampling (horizontal, then vertical).
public func resizeRGB(_ src: [UInt8], h: Int, w: Int, nh: Int, nw: Int) -> [UInt8] {
    if h == nh && w == nw { return src }
    let vert = pillowCoefficients(inSize: h, outSize: nh)
    var cur = src, cw = w, yFirst = 0
    if nw != w {
        let hor = pillowCoefficients(inSize: w, outSize: nw)
        yFirst = vert.bounds[0]
        let rows = vert.bounds[nh * 2 - 2] + vert.bounds[nh * 2 - 1] - yFirst
        var out = [UInt8](repeating: 0, count: rows * nw * 3)
        for y in 0..<rows {
            let row = (y + yFirst) * w * 3
            for xx in 0..<nw {
                let xmin = hor.bounds[xx * 2], xmax = hor.bounds[xx * 2 + 1], k0 = xx * hor.ksize
                var s0 = 1 << (precisionBits - 1), s1 = s0, s2 = s0
                for x in 0..<xmax {
                    let k = hor.kk[k0 + x], p = row + (x + xmin) * 3
                    s0 += Int(src[p]) * k
                    s1 += Int(src[p + 1]) * k
                    s2 += Int(src[p + 2]) * k
                }
                let o = (y * nw + xx) * 3
                out[o] = clip8(s0); out[o + 1] = clip8(s1); out[o + 2] = clip8(s2)
            }
        }
        cur = out
        cw = nw
    }
    if nh == h { return cur }
    var out = [UInt8](repeating: 0, count: nh * cw * 3)
    for yy in 0..<nh {
        let ymin = vert.bounds[yy * 2] - yFirst, ymax = vert.bounds[yy * 2 + 1], k0 = yy * vert.ksize
        for xx in 0..<cw {
            var s0 = 1 << (precisionBits - 1), s1 = s0, s2 = s0
            for y in 0..<ymax {
                let k = vert.kk[k0 + y], p = ((y + ymin) * cw + xx) * 3
                s0 += Int(cur[p]) * k
                s1 += Int(cur[p + 1]) * k
                s2 += Int(cur[p + 2]) * k
            }
            let o = (yy * cw + xx) * 3
            out[o] = clip8(s0); out[o + 1] = clip8(s1); out[o + 2] = clip8(s2)
        }
    }
    return out
}

/// preprocess.preprocess: RGB bytes -> the encoder input (1, 3, H, W) float32 0..255, mean-pixel padded.
/// Throws LetterboxError when a keep-ratio resize does not fit the fixed canvas.
public func preprocess(rgb: [UInt8], height h0: Int, width w0: Int) throws -> (tensor: [Float], letterbox: Letterbox) {
    let lb = try Letterbox(origH: h0, origW: w0)
    let resized = resizeRGB(rgb, h: h0, w: w0, nh: lb.resizedH, nw: lb.resizedW)
    let plane = lb.paddedH * lb.paddedW
    var tensor = [Float](repeating: 0, count: 3 * plane)
    for ch in 0..<3 {
        let pad = BundleConstants.padValue[ch]
        for i in 0..<plane { tensor[ch * plane + i] = pad }
        let srcCh = BundleConstants.channelOrder == "BGR" ? 2 - ch : ch
        for y in 0..<lb.resizedH {
            for x in 0..<lb.resizedW {
                tensor[ch * plane + y * lb.paddedW + x] = Float(resized[(y * lb.resizedW + x) * 3 + srcCh])
            }
        }
    }
    return (tensor, lb)
}

/// preprocess.points_to_boxes: clicks (x, y) in original pixels -> K x (cx, cy, w, h) normalised boxes.
public func pointsToBoxes(_ points: [(Double, Double)], _ lb: Letterbox) -> [Float] {
    let half = BundleConstants.clickBoxSize / 2
    var out: [Float] = []
    for (x, y) in points {
        precondition(x >= 0 && x < Double(lb.origW) && y >= 0 && y < Double(lb.origH), "click outside the image")
        let rx = x * lb.scaleX, ry = y * lb.scaleY
        let x0 = (rx - half) / Double(lb.promptW), x1 = (rx + half) / Double(lb.promptW)
        let y0 = (ry - half) / Double(lb.promptH), y1 = (ry + half) / Double(lb.promptH)
        out += [Float((x0 + x1) / 2), Float((y0 + y1) / 2), Float(x1 - x0), Float(y1 - y0)]
    }
    return out
}

// MARK: - postprocess

/// preprocess.bilinear_weights as two taps per output sample (align_corners=False, edge-clamped).
struct Taps {
    var i0: [Int], i1: [Int], w0: [Float], w1: [Float]

    init(outSize: Int, inSize: Int, scale: Double) {
        i0 = []
        i1 = []
        w0 = []
        w1 = []
        for i in 0..<outSize {
            let src = max((Double(i) + 0.5) * scale - 0.5, 0)
            let a = min(Int(src.rounded(.down)), inSize - 1), b = min(a + 1, inSize - 1)
            let lam = min(max(src - Double(a), 0), 1)
            i0.append(a); i1.append(b)
            w0.append(Float(a == b ? 1 - lam + lam : 1 - lam)); w1.append(Float(a == b ? 0 : lam))
        }
    }
}

/// One axis of postprocess._resize_plan: the official two-step resize (bilinear from `inSize` stride-4 samples to
/// the `padded` canvas, keep the first `resized` samples, bilinear to `outSize` original pixels) composed into one
/// matrix R2 (outSize, resized) @ R1[:resized] (resized, inSize), kept as `count` taps per output sample (at most
/// 4). Products of float32 weights are exact in Double and each entry sums at most two, so the Float weights equal
/// NumPy's float64 product cast to float32.
struct ComposedTaps {
    let count: Int
    var index: [Int] = [], weight: [Float] = []

    init(outSize: Int, resized: Int, padded: Int, inSize: Int) {
        let r2 = Taps(outSize: outSize, inSize: resized, scale: Double(resized) / Double(outSize))
        let r1 = Taps(outSize: padded, inSize: inSize, scale: Double(inSize) / Double(padded))
        var rows: [[(Int, Double)]] = []
        for i in 0..<outSize {
            var acc: [Int: Double] = [:]
            for (j, a) in [(r2.i0[i], Double(r2.w0[i])), (r2.i1[i], Double(r2.w1[i]))] {
                for (k, b) in [(r1.i0[j], Double(r1.w0[j])), (r1.i1[j], Double(r1.w1[j]))] {
                    acc[k, default: 0] += a * b
                }
            }
            rows.append(acc.filter { $0.value != 0 }.sorted { $0.key < $1.key }.map { ($0.key, $0.value) })
        }
        count = max(1, rows.map { $0.count }.max() ?? 1)
        for taps in rows {
            for t in 0..<count {  // unused slots: weight 0 on the first tap's index
                index.append(t < taps.count ? taps[t].0 : (taps.first?.0 ?? 0))
                weight.append(t < taps.count ? Float(taps[t].1) : 0)
            }
        }
    }
}

/// postprocess._resize_plan for the stride-4 logits of a letterbox's padded canvas (both axes); build it once per
/// image and reuse it for every map.
public struct ResizePlan {
    public let letterbox: Letterbox
    let ty: ComposedTaps, tx: ComposedTaps

    public init(_ lb: Letterbox) {
        letterbox = lb
        ty = ComposedTaps(outSize: lb.origH, resized: lb.resizedH, padded: lb.paddedH, inSize: lb.featureH)
        tx = ComposedTaps(outSize: lb.origW, resized: lb.resizedW, padded: lb.paddedW, inSize: lb.featureW)
    }
}

/// postprocess.resize_logits_to_image for map k of (N, h, w) logits: the official two-step bilinear resize (x4 to
/// the padded canvas, crop the resized image, resize to the original), applied as the composed taps along x on
/// every feature row, then along y -> H0 * W0 floats.
public func resizeLogits(_ logits: [Float], map k: Int, plan: ResizePlan) -> [Float] {
    let lb = plan.letterbox, ty = plan.ty, tx = plan.tx
    let h = lb.featureH, w = lb.featureW, h0 = lb.origH, w0 = lb.origW
    let base = k * h * w
    var rows = [Float](repeating: 0, count: h * w0)
    for fy in 0..<h {
        let r = base + fy * w
        for x in 0..<w0 {
            var v = 0.0
            for t in (x * tx.count)..<((x + 1) * tx.count) { v += Double(tx.weight[t]) * Double(logits[r + tx.index[t]]) }
            rows[fy * w0 + x] = Float(v)
        }
    }
    var out = [Float](repeating: 0, count: h0 * w0)
    var acc = [Double](repeating: 0, count: w0)  // one output row, summed in Double and rounded once
    for y in 0..<h0 {
        for x in 0..<w0 { acc[x] = 0 }
        for t in (y * ty.count)..<((y + 1) * ty.count) where ty.weight[t] != 0 {
            let wy = Double(ty.weight[t]), a = ty.index[t] * w0
            for x in 0..<w0 { acc[x] += wy * Double(rows[a + x]) }
        }
        for x in 0..<w0 { out[y * w0 + x] = Float(acc[x]) }
    }
    return out
}

public func resizeLogits(_ logits: [Float], map k: Int, _ lb: Letterbox) -> [Float] {
    resizeLogits(logits, map: k, plan: ResizePlan(lb))
}

/// postprocess.interactive_postprocess: K logit maps -> K masks (true = logit > threshold).
public func masksFromLogits(_ logits: [Float], count: Int, _ lb: Letterbox) -> [[Bool]] {
    let plan = ResizePlan(lb)
    return (0..<count).map { k in resizeLogits(logits, map: k, plan: plan).map { $0 > BundleConstants.maskThreshold } }
}

public struct Segment {
    public let id: Int, categoryId: Int, isThing: Bool, query: Int
    public var score: Float, area: Int
    public var name: String { BundleConstants.classNames[categoryId] }
}

/// postprocess.panoptic_merge: (Q, C+1) class logits + (Q, h, w) mask logits -> segment ids per pixel (0 = void).
public func panopticMerge(cls: [Float], masks: [Float], _ lb: Letterbox) -> (ids: [Int32], segments: [Segment]) {
    let c = BundleConstants.classNames.count, q = BundleConstants.numQueries, n = lb.origH * lb.origW
    var scores = [Float](repeating: 0, count: q), labels = [Int](repeating: 0, count: q), keep: [Int] = []
    for i in 0..<q {
        let row = cls[(i * (c + 1))..<((i + 1) * (c + 1))].map { Double($0) }
        let mx = row.max()!
        let e = row.map { Foundation.exp($0 - mx) }
        let sum = e.reduce(0, +)
        let arg = e.indices.max { e[$0] < e[$1] || (e[$0] == e[$1] && $0 > $1) }!  // first maximum
        scores[i] = Float(e[arg] / sum)
        labels[i] = arg
        if arg != c && scores[i] > Float(BundleConstants.panopticScoreThreshold) { keep.append(i) }
    }
    var ids = [Int32](repeating: 0, count: n)
    if keep.isEmpty { return (ids, []) }
    var fg = [[Bool]](), best = [Float](repeating: -.infinity, count: n), winner = [Int](repeating: 0, count: n)
    let plan = ResizePlan(lb)
    for (k, qi) in keep.enumerated() {
        let r = resizeLogits(masks, map: qi, plan: plan)
        var f = [Bool](repeating: false, count: n)
        for i in 0..<n {
            // postprocess._sigmoid: float32, NOT clipped; below about -88.72 exp overflows to +inf and the sigmoid is
            // exactly 0, so where every kept query is 0 the first kept query wins (the official merge, issue 12)
            let s: Float = 1 / (1 + Foundation.exp(-r[i]))
            f[i] = s >= 0.5
            let p = scores[qi] * s
            if p > best[i] { best[i] = p; winner[i] = k }  // strict: an earlier query wins ties
        }
        fg.append(f)
    }
    var segments: [Segment] = [], stuff: [Int: Int] = [:]  // stuff class -> index in segments
    for (k, qi) in keep.enumerated() {
        var area = 0, orig = 0, inside = 0
        for i in 0..<n {
            if fg[k][i] { orig += 1 }
            if winner[i] == k { area += 1; if fg[k][i] { inside += 1 } }
        }
        if area == 0 || orig == 0 || Double(area) / Double(orig) < BundleConstants.panopticOverlapThreshold || inside == 0 {
            continue
        }
        let label = labels[qi], thing = BundleConstants.isThing[label]
        var index = thing ? nil : stuff[label]
        if index == nil {
            segments.append(Segment(id: segments.count + 1, categoryId: label, isThing: thing, query: qi,
                                    score: scores[qi], area: 0))
            index = segments.count - 1
            if !thing { stuff[label] = index }
        }
        let sid = Int32(segments[index!].id)
        for i in 0..<n where winner[i] == k && fg[k][i] { ids[i] = sid }
        segments[index!].area += inside
        segments[index!].score = max(segments[index!].score, scores[qi])
    }
    return (ids, segments)
}

/// postprocess.segment_color: golden-ratio hue walk, HSV(s 0.65, v 0.95) -> RGB bytes.
public func segmentColor(_ index: Int) -> [UInt8] {
    let h = (Double(index) * 0.618033988749895).truncatingRemainder(dividingBy: 1), s = 0.65, v = 0.95
    let i = Int(h * 6), f = h * 6 - Double(i)
    let p = v * (1 - s), q = v * (1 - s * f), t = v * (1 - s * (1 - f))
    let rgb = [[v, t, p], [q, v, p], [p, v, t], [p, q, v], [t, p, v], [v, p, q]][i % 6]
    return rgb.map { UInt8(($0 * 255).rounded(.toNearestOrEven)) }
}

/// postprocess.overlay: blend segment ids (0 = untouched) onto RGB bytes -> RGBA bytes.
public func overlay(rgb: [UInt8], ids: [Int32], alpha: Float = 0.5) -> [UInt8] {
    var out = [UInt8](repeating: 255, count: ids.count * 4)
    var palette: [Int32: [UInt8]] = [:]
    for i in 0..<ids.count {
        let id = ids[i]
        for c in 0..<3 { out[i * 4 + c] = rgb[i * 3 + c] }
        if id > 0 {
            let col = palette[id] ?? segmentColor(Int(id))
            palette[id] = col
            for c in 0..<3 {
                out[i * 4 + c] = UInt8(((1 - alpha) * Float(rgb[i * 3 + c]) + alpha * Float(col[c])).rounded(.toNearestOrEven))
            }
        }
    }
    return out
}
