// FaRLFace.kt — run a farl-edge Android artifact (ExecuTorch .pte or LiteRT .tflite) on camera frames.
//
// Source only: written against the ExecuTorch (org.pytorch.executorch) and LiteRT
// (org.tensorflow.lite) Android APIs and the artifact `farl-edge export --target executorch|litert`
// writes; it was not compiled here (no Android toolchain on the Linux machines this project is
// built on). See README.md beside it.
//
// Same steps as farl_edge/runtime/pipeline.py: face box / 5 points from the app's detector → crop
// matrix (continuous pixel coordinates, top-left origin) → bilinear warp into an S×S bitmap →
// float32 NCHW RGB in [0, 1] (the model normalises inside) → model → landmarks back through the
// inverse matrix. S, the warp and its settings come from manifest.json ("input_size", "preprocess").

package org.farledge

import android.graphics.Bitmap
import android.graphics.Canvas
import android.graphics.Matrix
import android.graphics.Paint
import android.graphics.PointF
import android.graphics.RectF
import org.json.JSONObject
import org.pytorch.executorch.EValue
import org.pytorch.executorch.Module
import org.pytorch.executorch.Tensor
import org.tensorflow.lite.Interpreter
import java.io.File
import java.nio.ByteBuffer
import java.nio.ByteOrder

class FaRLFace(artifactDir: File, threads: Int = 2) {
    private val manifest = JSONObject(File(artifactDir, "manifest.json").readText())
    val task: String = manifest.getString("task")
    val size: Int = manifest.getInt("input_size")             // the crop (512 under protocol "farl")
    private val pre = manifest.getJSONObject("preprocess")
    val warp: String = pre.optString("warp", "box")             // box | similarity | ffhq ("tanh": not here)
    private val boxScale = pre.optDouble("box_scale", 1.0)
    private val outputs = (0 until manifest.getJSONArray("outputs").length())
        .map { manifest.getJSONArray("outputs").getJSONObject(it).getString("name") }
    private val modelFile = File(artifactDir, manifest.getString("model_file"))
    private val module: Module? = if (manifest.getString("target") == "executorch") Module.load(modelFile.path) else null
    private val interpreter: Interpreter? = if (module == null)
        Interpreter(modelFile, Interpreter.Options().setNumThreads(threads)) else null

    init {
        require(manifest.getString("status") == "ok") { "artifact was not validated (farl-edge validate)" }
        require(warp != "tanh" && warp != "full") { "warp '$warp' is not implemented in this example" }
    }

    /** Model outputs by manifest name for one face crop (S×S ARGB bitmap). */
    fun infer(crop: Bitmap): Map<String, FloatArray> {
        val input = toNchw(crop)
        if (module != null) {
            val out = module.forward(EValue.from(Tensor.fromBlob(input, longArrayOf(1, 3, size.toLong(), size.toLong()))))
            return outputs.zip(out.map { it.toTensor().dataAsFloatArray }).toMap()
        }
        val buffer = ByteBuffer.allocateDirect(input.size * 4).order(ByteOrder.nativeOrder())
        buffer.asFloatBuffer().put(input)
        val result = HashMap<String, Any>()
        val sig = interpreter!!.getSignatureOutputs("serving_default").sortedBy { it.substringAfter("output_").substringBefore("_").toIntOrNull() ?: 0 }
        sig.forEach { name -> result[name] = ByteBuffer.allocateDirect(interpreter.getOutputTensorFromSignature(name, "serving_default").numBytes()).order(ByteOrder.nativeOrder()) }
        interpreter.runSignature(mapOf(interpreter.getSignatureInputs("serving_default")[0] to buffer), result, "serving_default")
        return outputs.zip(sig.map { name ->
            val b = (result[name] as ByteBuffer).apply { rewind() }.asFloatBuffer()
            FloatArray(b.remaining()).also { b.get(it) }
        }).toMap()
    }

    /** Landmarks (K, 2) in frame coordinates for one face: `box` from the detector, `five` its 5 points. */
    fun landmarks(frame: Bitmap, box: RectF, five: List<PointF>): List<PointF> {
        val m = cropMatrix(box, five)
        val out = infer(warpCrop(frame, m))["landmarks"]!!
        val inv = Matrix().also { m.invert(it) }
        val pts = FloatArray(out.size).also { inv.mapPoints(it, out) }  // model input pixels → frame
        return (pts.indices step 2).map { PointF(pts[it], pts[it + 1]) }
    }

    /** Frame → model input (farl_edge.geometry: box_matrix / similarity_from_5pts / ffhq_matrix). */
    fun cropMatrix(box: RectF, five: List<PointF>): Matrix = when (warp) {
        "box" -> {
            val side = maxOf(box.width(), box.height()) * boxScale.toFloat()
            val s = size / side
            Matrix().apply { setScale(s, s); postTranslate(size / 2f - s * box.centerX(), size / 2f - s * box.centerY()) }
        }
        "ffhq" -> similarity(ffhqQuad(five), listOf(PointF(0f, 0f), PointF(size.toFloat(), 0f),
                                                    PointF(size.toFloat(), size.toFloat()), PointF(0f, size.toFloat())))
        else -> similarity(five, TEMPLATE_512.map { PointF(it.x * size / 512f, it.y * size / 512f) })
    }

    /** Bilinear warp of the frame into the S×S crop, black outside (as the other runtimes). */
    fun warpCrop(frame: Bitmap, m: Matrix): Bitmap {
        val crop = Bitmap.createBitmap(size, size, Bitmap.Config.ARGB_8888)
        Canvas(crop).apply { drawColor(android.graphics.Color.BLACK); drawBitmap(frame, m, Paint(Paint.FILTER_BITMAP_FLAG)) }
        return crop
    }

    private fun toNchw(crop: Bitmap): FloatArray {
        val px = IntArray(size * size).also { crop.getPixels(it, 0, size, 0, 0, size, size) }
        val out = FloatArray(3 * size * size)
        for (i in px.indices) {
            out[i] = (px[i] shr 16 and 0xFF) / 255f
            out[size * size + i] = (px[i] shr 8 and 0xFF) / 255f
            out[2 * size * size + i] = (px[i] and 0xFF) / 255f
        }
        return out
    }

    companion object {
        // FaRL's 5-point template in a 512 frame (farl_edge.geometry.FARL_TEMPLATE_512)
        val TEMPLATE_512 = listOf(PointF(196f, 226f), PointF(316f, 226f), PointF(256f, 286f), PointF(220f, 360.4f), PointF(292f, 360.4f))

        /** Least-squares similarity (Umeyama, no reflection) mapping src onto dst. */
        fun similarity(src: List<PointF>, dst: List<PointF>): Matrix {
            val n = src.size
            val msx = src.sumOf { it.x.toDouble() } / n; val msy = src.sumOf { it.y.toDouble() } / n
            val mdx = dst.sumOf { it.x.toDouble() } / n; val mdy = dst.sumOf { it.y.toDouble() } / n
            var a = 0.0; var b = 0.0; var v = 0.0
            for (i in 0 until n) {
                val sx = src[i].x - msx; val sy = src[i].y - msy; val dx = dst[i].x - mdx; val dy = dst[i].y - mdy
                a += sx * dx + sy * dy; b += sx * dy - sy * dx; v += sx * sx + sy * sy
            }
            val c = a / v; val s = b / v  // scale·cos, scale·sin
            val tx = mdx - (c * msx - s * msy); val ty = mdy - (s * msx + c * msy)
            return Matrix().apply { setValues(floatArrayOf(c.toFloat(), (-s).toFloat(), tx.toFloat(), s.toFloat(), c.toFloat(), ty.toFloat(), 0f, 0f, 1f)) }
        }

        /** FFHQ / CelebA-HQ crop square from 5 points (farl_edge.geometry.ffhq_quad). */
        fun ffhqQuad(p: List<PointF>): List<PointF> {
            val ex = (p[0].x + p[1].x) / 2; val ey = (p[0].y + p[1].y) / 2
            val mx = (p[3].x + p[4].x) / 2; val my = (p[3].y + p[4].y) / 2
            val eex = p[1].x - p[0].x; val eey = p[1].y - p[0].y; val emx = mx - ex; val emy = my - ey
            var xx = eex + emy; var xy = eey - emx  // eye_to_eye - rot90(eye_to_mouth)
            val k = maxOf(Math.hypot(eex.toDouble(), eey.toDouble()) * 2.0, Math.hypot(emx.toDouble(), emy.toDouble()) * 1.8) /
                Math.hypot(xx.toDouble(), xy.toDouble())
            xx = (xx * k).toFloat(); xy = (xy * k).toFloat()
            val yx = -xy; val yy = xx
            val cx = ex + emx * 0.1f; val cy = ey + emy * 0.1f
            return listOf(PointF(cx - xx - yx, cy - xy - yy), PointF(cx + xx - yx, cy + xy - yy),
                          PointF(cx + xx + yx, cy + xy + yy), PointF(cx - xx + yx, cy - xy + yy))
        }
    }
}
