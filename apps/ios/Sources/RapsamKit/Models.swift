// The three CoreML graphs of a bundle (exporters/coreml.py: fixed shapes, float32 IO, the prompt decoder with
// BundleConstants.promptSlots box slots). Mirrors rapsam_edge/runtime/coreml_backend.py: unused slots hold
// BundleConstants.padBox and their outputs are dropped; more clicks than slots run in several calls.
import CoreML
import CryptoKit
import Foundation

public enum RapsamError: Error, CustomStringConvertible {
    case missingResource(String)
    case manifestMismatch(found: String)
    case missingOutput(String)

    public var description: String {
        switch self {
        case .missingResource(let name):
            return "\(name) is not in the app's resources; run apps/ios/generate_constants.py BUNDLE and rebuild."
        case .manifestMismatch(let found):
            return "Resources/manifest.json has sha256 \(found.prefix(12))…, the generated constants expect "
                + "\(BundleConstants.manifestSHA256.prefix(12))…; rerun apps/ios/generate_constants.py and rebuild."
        case .missingOutput(let name):
            return "the model returned no \(name) output; the packages do not match the generated constants."
        }
    }
}

/// Encoder outputs kept for the decoders (features, prompt keys/values), by name.
public struct Encoded {
    public let values: [String: MLMultiArray]
}

public final class RapsamModels {
    let encoder: MLModel, objectDecoder: MLModel, promptDecoder: MLModel

    /// Loads the packages copied into `resources` by generate_constants.py (compiled once, then cached) after
    /// checking that resources/manifest.json is the manifest the constants were generated from.
    public init(resources: URL, configuration: MLModelConfiguration = MLModelConfiguration()) throws {
        let manifest = resources.appendingPathComponent("manifest.json")
        guard let data = try? Data(contentsOf: manifest) else { throw RapsamError.missingResource("manifest.json") }
        let digest = SHA256.hash(data: data).map { String(format: "%02x", $0) }.joined()
        guard digest == BundleConstants.manifestSHA256 else { throw RapsamError.manifestMismatch(found: digest) }
        func load(_ spec: GraphSpec) throws -> MLModel {
            let package = resources.appendingPathComponent(spec.resource + ".mlpackage")
            guard FileManager.default.fileExists(atPath: package.path) else {
                throw RapsamError.missingResource(spec.resource + ".mlpackage")
            }
            let cache = FileManager.default.urls(for: .cachesDirectory, in: .userDomainMask)[0]
                .appendingPathComponent("rapsam-\(BundleConstants.manifestSHA256.prefix(16))-\(spec.resource).mlmodelc")
            if !FileManager.default.fileExists(atPath: cache.path) {
                let compiled = try MLModel.compileModel(at: package)
                try? FileManager.default.removeItem(at: cache)
                try FileManager.default.moveItem(at: compiled, to: cache)
            }
            return try MLModel(contentsOf: cache, configuration: configuration)
        }
        encoder = try load(BundleConstants.encoder)
        objectDecoder = try load(BundleConstants.objectDecoder)
        promptDecoder = try load(BundleConstants.promptDecoder)
    }

    private func run(_ model: MLModel, _ spec: GraphSpec, _ feeds: [String: MLMultiArray]) throws -> [String: MLMultiArray] {
        let input = try MLDictionaryFeatureProvider(dictionary: feeds.mapValues { MLFeatureValue(multiArray: $0) })
        let out = try model.prediction(from: input)
        var values: [String: MLMultiArray] = [:]
        for name in spec.outputs {
            guard let v = out.featureValue(for: name)?.multiArrayValue else { throw RapsamError.missingOutput(name) }
            values[name] = v
        }
        return values
    }

    /// tensor: preprocess()'s (1, 3, H, W) float32.
    public func encode(_ tensor: [Float]) throws -> Encoded {
        let shape = [1, 3, BundleConstants.inputHeight, BundleConstants.inputWidth]
        return Encoded(values: try run(encoder, BundleConstants.encoder,
                                       [BundleConstants.encoder.inputs[0]: try multiArray(tensor, shape)]))
    }

    /// boxes: K x 4 from pointsToBoxes -> (K x h*w mask logits, K predicted IoUs), all K in as few calls as slots allow.
    public func decodePrompts(_ encoded: Encoded, boxes: [Float]) throws -> (logits: [Float], iou: [Float]) {
        let spec = BundleConstants.promptDecoder, slots = BundleConstants.promptSlots
        let k = boxes.count / 4
        var logits: [Float] = [], ious: [Float] = []
        var start = 0
        while start < k {
            let n = min(slots, k - start)
            var chunk = Array(boxes[(start * 4)..<((start + n) * 4)])
            for _ in n..<slots { chunk += BundleConstants.padBox }
            var feeds: [String: MLMultiArray] = [:]
            for name in spec.inputs.dropLast() {  // the encoder's outputs, by name
                guard let v = encoded.values[name] else { throw RapsamError.missingOutput(name) }
                feeds[name] = v
            }
            feeds[spec.inputs.last!] = try multiArray(chunk, [1, slots, 4])
            let out = try run(promptDecoder, spec, feeds)
            let maps = floats(out[spec.outputs[0]]!), iou = floats(out[spec.outputs[1]]!)
            let per = maps.count / slots
            logits += maps[0..<(n * per)]
            ious += iou[0..<n]
            start += n
        }
        return (logits, ious)
    }

    /// -> (Q x (C+1) class logits, Q x h*w mask logits) of one frame.
    public func decodeObjects(_ encoded: Encoded) throws -> (cls: [Float], masks: [Float]) {
        let spec = BundleConstants.objectDecoder
        guard let features = encoded.values[spec.inputs[0]] else { throw RapsamError.missingOutput(spec.inputs[0]) }
        let out = try run(objectDecoder, spec, [spec.inputs[0]: features])
        return (floats(out[spec.outputs[0]]!), floats(out[spec.outputs[1]]!))
    }
}

func multiArray(_ values: [Float], _ shape: [Int]) throws -> MLMultiArray {
    let array = try MLMultiArray(shape: shape.map { NSNumber(value: $0) }, dataType: .float32)
    let ptr = array.dataPointer.bindMemory(to: Float.self, capacity: values.count)
    for (i, v) in values.enumerated() { ptr[i] = v }  // a new MLMultiArray is contiguous
    return array
}

/// Row-major copy of a float32 MLMultiArray, honouring its strides (CoreML may pad rows).
func floats(_ array: MLMultiArray) -> [Float] {
    let shape = array.shape.map { $0.intValue }, strides = array.strides.map { $0.intValue }
    let ptr = array.dataPointer.bindMemory(to: Float.self, capacity: array.count)
    var out = [Float](repeating: 0, count: array.count)
    for i in 0..<array.count {
        var rest = i, offset = 0
        for d in stride(from: shape.count - 1, through: 0, by: -1) {
            offset += (rest % shape[d]) * strides[d]
            rest /= shape[d]
        }
        out[i] = ptr[offset]
    }
    return out
}
