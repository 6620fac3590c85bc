// FaRLFace.swift — run a farl-edge Core ML package on camera frames (iOS 16+ / macOS 13+).
//
// Source only: written against the Vision, Core Image and Core ML APIs and the package that
// `farl-edge export --target coreml` writes; it was not compiled here (no Apple toolchain on the
// Linux machines this project is built on). See README.md beside it.
//
// Same steps as farl_edge/runtime/pipeline.py:
//   Vision face landmarks → FaRL's 5 points / landmark box → crop matrix (continuous pixel
//   coordinates, top-left origin) → Core Image warp into an S×S pixel buffer → Core ML
//   (input "image", RGB, scaled 1/255 inside the model) → results back in frame coordinates.
// Not done here: the tanh warp of LaPa models (needs a Core Image warp kernel / Metal; use
// similarity crops or the Python / C++ runtimes), and label maps are unwarped as labels (argmax
// first), not as class scores like the Python runtime. Under the manifest's `protocol: "farl"`
// (official FaRL weights: a 512 crop the model resizes to 448 itself) `size` is the crop; Core Image
// warps in float, but the 8-bit pixel buffer Core ML takes rounds the crop: FaRL's numbers within
// that rounding, not bit-exact (the Python and C++ runtimes warp in float).

import CoreImage
import CoreML
import CoreVideo
import Foundation
import Vision
import simd

/// 2×3 affine on continuous pixel coordinates (pixel i spans [i, i+1)), origin top-left:
/// q = A·p + t, like farl_edge/geometry.py.
public struct Affine {
    public var a: Double, b: Double, tx: Double  // row 0
    public var c: Double, d: Double, ty: Double  // row 1

    public func apply(_ p: CGPoint) -> CGPoint {
        CGPoint(x: a * p.x + b * p.y + tx, y: c * p.x + d * p.y + ty)
    }

    public var inverse: Affine {
        let det = a * d - b * c
        let ia = d / det, ib = -b / det, ic = -c / det, id = a / det
        return Affine(a: ia, b: ib, tx: -(ia * tx + ib * ty), c: ic, d: id, ty: -(ic * tx + id * ty))
    }

    /// Least-squares similarity mapping `src` onto `dst` (no reflection): closed form of Umeyama in 2-D.
    public static func similarity(from src: [CGPoint], to dst: [CGPoint]) -> Affine {
        let n = Double(src.count)
        let ms = src.reduce(CGPoint.zero) { CGPoint(x: $0.x + $1.x / n, y: $0.y + $1.y / n) }
        let md = dst.reduce(CGPoint.zero) { CGPoint(x: $0.x + $1.x / n, y: $0.y + $1.y / n) }
        var num1 = 0.0, num2 = 0.0, den = 0.0
        for (s, t) in zip(src, dst) {
            let x = s.x - ms.x, y = s.y - ms.y, u = t.x - md.x, v = t.y - md.y
            num1 += x * u + y * v
            num2 += x * v - y * u
            den += x * x + y * y
        }
        let p = num1 / den, q = num2 / den  // [[p, -q], [q, p]]
        return Affine(a: p, b: -q, tx: md.x - (p * ms.x - q * ms.y),
                      c: q, d: p, ty: md.y - (q * ms.x + p * ms.y))
    }

    /// farl_edge.geometry.box_matrix: the square of side max(w, h)·scale centred on `box` → [0, size)².
    public static func box(_ box: CGRect, size: Int, scale: Double) -> Affine {
        let side = max(box.width, box.height) * scale
        let s = Double(size) / side
        return Affine(a: s, b: 0, tx: Double(size) / 2 - s * box.midX,
                      c: 0, d: s, ty: Double(size) / 2 - s * box.midY)
    }
}

/// FaRL's canonical 5 points in a 512 frame (eye centres, nose tip, mouth corners; image-left first).
let farlTemplate512: [CGPoint] = [CGPoint(x: 196, y: 226), CGPoint(x: 316, y: 226), CGPoint(x: 256, y: 286),
                                  CGPoint(x: 220, y: 360.4), CGPoint(x: 292, y: 360.4)]

public struct FaceResult {
    public var box: CGRect                // Vision's face box, frame pixels, top-left origin
    public var fivePoints: [CGPoint]      // eye centres, nose tip, mouth corners (image-left first)
    public var matrix: Affine             // frame → model input
    public var landmarks: [CGPoint] = []  // alignment models, frame pixels
    public var labels: [UInt8] = []       // parsing models: label map of `labelRegion`, row-major
    public var labelRegion: CGRect = .zero
}

public final class FaRLFace {
    public let model: MLModel
    public let task: String          // "alignment" | "parsing"
    public let size: Int             // model input size (S): manifest input_size, the crop (512 under protocol "farl")
    public let warp: String          // manifest preprocess.warp: "box" | "similarity" | "ffhq" ("tanh": not supported here)
    public let boxScale: Double
    public let labelNames: [String]
    private let context = CIContext(options: [.workingColorSpace: NSNull()])  // no colour management: raw RGB

    /// `artifact`: the folder `farl-edge export --target coreml` wrote (model.mlpackage + manifest.json),
    /// compiled by Xcode into the app bundle as `FaRL.mlmodelc`, or compiled at run time.
    public init(artifact: URL, computeUnits: MLComputeUnits = .all) throws {
        let manifest = try JSONSerialization.jsonObject(with: Data(contentsOf: artifact.appendingPathComponent("manifest.json"))) as! [String: Any]
        task = manifest["task"] as! String
        size = manifest["input_size"] as! Int
        let pre = manifest["preprocess"] as? [String: Any] ?? [:]
        warp = pre["warp"] as? String ?? "box"
        boxScale = pre["box_scale"] as? Double ?? 1.0
        labelNames = manifest["labels"] as? [String] ?? []
        precondition(warp != "tanh", "tanh crops are not implemented in this example (see README)")
        precondition(warp != "full", "whole-image models are not face-crop models")
        let config = MLModelConfiguration()
        config.computeUnits = computeUnits
        let compiled = try MLModel.compileModel(at: artifact.appendingPathComponent("model.mlpackage"))
        model = try MLModel(contentsOf: compiled, configuration: config)
    }

    /// All faces in a frame (`pixelBuffer`: the camera's BGRA buffer, upright).
    public func process(_ pixelBuffer: CVPixelBuffer) throws -> [FaceResult] {
        let request = VNDetectFaceLandmarksRequest()
        try VNImageRequestHandler(cvPixelBuffer: pixelBuffer, options: [:]).perform([request])
        let w = Double(CVPixelBufferGetWidth(pixelBuffer)), h = Double(CVPixelBufferGetHeight(pixelBuffer))
        let image = CIImage(cvPixelBuffer: pixelBuffer)
        var out: [FaceResult] = []
        for face in request.results ?? [] {
            guard let lm = face.landmarks, let five = fivePoints(lm, width: w, height: h) else { continue }
            // Vision's points and boxes have a bottom-left origin: flip to top-left.
            let bb = face.boundingBox
            let box = CGRect(x: bb.minX * w, y: (1 - bb.maxY) * h, width: bb.width * w, height: bb.height * h)
            let matrix: Affine
            if warp == "box" {
                // alignment crops were made around the box of the annotated landmarks: Vision's
                // landmark points (contour included) give a close stand-in
                let all = (lm.allPoints?.pointsInImage(imageSize: CGSize(width: w, height: h)) ?? [])
                    .map { CGPoint(x: $0.x, y: h - $0.y) }
                let xs = all.map(\.x), ys = all.map(\.y)
                let lmBox = all.isEmpty ? box : CGRect(x: xs.min()!, y: ys.min()!, width: xs.max()! - xs.min()!,
                                                      height: ys.max()! - ys.min()!)
                matrix = .box(lmBox, size: size, scale: boxScale)
            } else if warp == "ffhq" {
                // farl_edge.geometry.ffhq_matrix: the FFHQ / CelebA-HQ square from the 5 points
                matrix = .similarity(from: ffhqQuad(five), to: [CGPoint(x: 0, y: 0), CGPoint(x: size, y: 0),
                                                               CGPoint(x: size, y: size), CGPoint(x: 0, y: size)])
            } else {
                let s = Double(size) / 512
                matrix = .similarity(from: five, to: farlTemplate512.map { CGPoint(x: $0.x * s, y: $0.y * s) })
            }
            var result = FaceResult(box: box, fivePoints: five, matrix: matrix)
            let crop = try cropBuffer(image, frameHeight: h, matrix: matrix)
            let prediction = try model.prediction(from: MLDictionaryFeatureProvider(
                dictionary: ["image": MLFeatureValue(pixelBuffer: crop)]))
            if task == "alignment", let arr = prediction.featureValue(for: "landmarks")?.multiArrayValue {
                let inv = matrix.inverse
                let k = arr.shape[1].intValue
                result.landmarks = (0..<k).map { i in
                    inv.apply(CGPoint(x: arr[[0, i, 0] as [NSNumber]].doubleValue, y: arr[[0, i, 1] as [NSNumber]].doubleValue))
                }
            } else if task == "parsing", let arr = prediction.featureValue(for: "logits")?.multiArrayValue {
                (result.labels, result.labelRegion) = labelMap(arr, matrix: matrix, frame: CGSize(width: w, height: h))
            }
            out.append(result)
        }
        return out
    }

    /// FaRL's 5 points from Vision: pupils, nose tip (lowest nose-crest point), mouth corners
    /// (extreme outer-lip points along the eye line). Top-left origin, image-left first.
    func fivePoints(_ lm: VNFaceLandmarks2D, width w: Double, height h: Double) -> [CGPoint]? {
        let size = CGSize(width: w, height: h)
        func pts(_ r: VNFaceLandmarkRegion2D?) -> [CGPoint]? {
            r?.pointsInImage(imageSize: size).map { CGPoint(x: $0.x, y: h - $0.y) }
        }
        guard let p1 = pts(lm.leftPupil)?.first, let p2 = pts(lm.rightPupil)?.first,
              let crest = pts(lm.noseCrest), let lips = pts(lm.outerLips), !crest.isEmpty, lips.count > 2 else { return nil }
        let (le, re) = p1.x < p2.x ? (p1, p2) : (p2, p1)  // image-left eye first
        let u = CGPoint(x: re.x - le.x, y: re.y - le.y)
        let along = { (p: CGPoint) in p.x * u.x + p.y * u.y }
        let nose = crest.max { $0.y < $1.y }!
        let left = lips.min { along($0) < along($1) }!, right = lips.max { along($0) < along($1) }!
        return [le, re, nose, left, right]
    }

    /// FFHQ recipe (facer's get_face_align_matrix_celebm): the crop square's corners, clockwise from
    /// top-left, centred a tenth of the way from the eyes to the mouth.
    func ffhqQuad(_ p: [CGPoint]) -> [CGPoint] {
        func v(_ a: CGPoint) -> SIMD2<Double> { SIMD2(Double(a.x), Double(a.y)) }
        func rot90(_ a: SIMD2<Double>) -> SIMD2<Double> { SIMD2(-a.y, a.x) }
        let eye = (v(p[0]) + v(p[1])) / 2, mouth = (v(p[3]) + v(p[4])) / 2
        let e2e = v(p[1]) - v(p[0]), e2m = mouth - eye
        var x = e2e - rot90(e2m)
        x *= max(simd_length(e2e) * 2.0, simd_length(e2m) * 1.8) / simd_length(x)
        let y = rot90(x), c = eye + e2m * 0.1
        return [c - x - y, c + x - y, c + x + y, c - x + y].map { CGPoint(x: $0.x, y: $0.y) }
    }

    /// The S×S model input: frame warped by `matrix` (bilinear, black outside).
    func cropBuffer(_ image: CIImage, frameHeight h: Double, matrix m: Affine) throws -> CVPixelBuffer {
        // Core Image has a bottom-left origin: flip y in the frame and in the crop around the
        // top-left-origin matrix (both are continuous coordinates, so the flip is exact).
        let s = Double(size)
        let t = CGAffineTransform(a: m.a, b: -m.c, c: -m.b, d: m.d,
                                  tx: m.tx + m.b * h, ty: s - m.ty - m.d * h)
        let warped = image.transformed(by: t)  // bilinear
            .composited(over: CIImage(color: .black))  // black outside the frame, as the other runtimes
            .cropped(to: CGRect(x: 0, y: 0, width: s, height: s))
        var buffer: CVPixelBuffer?
        CVPixelBufferCreate(nil, size, size, kCVPixelFormatType_32BGRA,
                            [kCVPixelBufferIOSurfacePropertiesKey: [:]] as CFDictionary, &buffer)
        guard let out = buffer else { throw NSError(domain: "FaRLFace", code: 1) }
        context.render(warped, to: out)
        return out
    }

    /// Label map of the frame region the crop covers: argmax of the (1, C, S/4, S/4) logits,
    /// looked up (nearest) at each region pixel's position in the crop.
    func labelMap(_ logits: MLMultiArray, matrix m: Affine, frame: CGSize) -> ([UInt8], CGRect) {
        let c = logits.shape[1].intValue, lh = logits.shape[2].intValue, lw = logits.shape[3].intValue
        var arg = [UInt8](repeating: 0, count: lh * lw)
        let ptr = logits.dataPointer.bindMemory(to: Float.self, capacity: c * lh * lw)  // fp32 output
        for i in 0..<(lh * lw) {
            var best = -Float.greatestFiniteMagnitude, k = 0
            for j in 0..<c where ptr[j * lh * lw + i] > best { best = ptr[j * lh * lw + i]; k = j }
            arg[i] = UInt8(k)
        }
        let inv = m.inverse, s = Double(size)
        let corners = [CGPoint(x: 0, y: 0), CGPoint(x: s, y: 0), CGPoint(x: s, y: s), CGPoint(x: 0, y: s)].map(inv.apply)
        let x0 = max(0, Int(floor(corners.map(\.x).min()!))), y0 = max(0, Int(floor(corners.map(\.y).min()!)))
        let x1 = min(Int(frame.width), Int(ceil(corners.map(\.x).max()!)))
        let y1 = min(Int(frame.height), Int(ceil(corners.map(\.y).max()!)))
        guard x1 > x0, y1 > y0 else { return ([], .zero) }
        var labels = [UInt8](repeating: 0, count: (x1 - x0) * (y1 - y0))
        let scale = Double(lw) / s
        for y in y0..<y1 {
            for x in x0..<x1 {
                let q = m.apply(CGPoint(x: Double(x) + 0.5, y: Double(y) + 0.5))
                let cx = Int(floor(q.x * scale)), cy = Int(floor(q.y * scale))
                if cx >= 0, cy >= 0, cx < lw, cy < lh { labels[(y - y0) * (x1 - x0) + (x - x0)] = arg[cy * lw + cx] }
            }
        }
        return (labels, CGRect(x: x0, y: y0, width: x1 - x0, height: y1 - y0))
    }
}
