// See face_pipeline.hpp. Mirrors farl_edge/runtime/{detector,pipeline,draw}.py and
// farl_edge/{geometry,crops}.py; keep them in step.
#include "face_pipeline.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <numeric>
#include <stdexcept>

#include <nlohmann/json.hpp>
#include <opencv2/imgproc.hpp>

namespace farl {
namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

double ms_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

json read_json(const std::string& path) {
  std::ifstream f(path);
  if (!f) throw std::runtime_error("cannot read " + path);
  return json::parse(f);
}

// FaRL's canonical 5 points in a 512 frame (eye centres, nose tip, mouth corners; image sides).
const double kTemplate512[5][2] = {{196.0, 226.0}, {316.0, 226.0}, {256.0, 286.0}, {220.0, 360.4}, {292.0, 360.4}};

// Continuous-coordinate affine -> OpenCV affine (integer pixel centres).
cv::Mat to_cv(const cv::Matx23d& m) {
  cv::Mat out(2, 3, CV_64F);
  for (int r = 0; r < 2; ++r) {
    out.at<double>(r, 0) = m(r, 0);
    out.at<double>(r, 1) = m(r, 1);
    out.at<double>(r, 2) = m(r, 2) + 0.5 * (m(r, 0) + m(r, 1)) - 0.5;
  }
  return out;
}

double tanh_forward(double c, double f) {
  double a = std::abs(c);
  if (f <= 0 || a <= 1 - f) return c;
  return std::copysign(f * std::tanh((a - (1 - f)) / f) + (1 - f), c);
}

double tanh_inverse(double v, double f, double clamp) {
  double a = std::abs(v);
  if (f <= 0 || a <= 1 - f) return v;
  double arg = std::clamp((a - (1 - f)) / f, 0.0, clamp);
  return std::copysign(f * std::atanh(arg) + (1 - f), v);
}

double iou(const cv::Rect2d& a, const cv::Rect2d& b) {
  double inter = (a & b).area();
  double uni = a.area() + b.area() - inter;
  return uni > 0 ? inter / uni : 0.0;
}

}  // namespace

cv::Point2d apply(const cv::Matx23d& m, const cv::Point2d& p) {
  return {m(0, 0) * p.x + m(0, 1) * p.y + m(0, 2), m(1, 0) * p.x + m(1, 1) * p.y + m(1, 2)};
}

cv::Matx23d invert(const cv::Matx23d& m) {
  double det = m(0, 0) * m(1, 1) - m(0, 1) * m(1, 0);
  double a = m(1, 1) / det, b = -m(0, 1) / det, c = -m(1, 0) / det, d = m(0, 0) / det;
  return {a, b, -(a * m(0, 2) + b * m(1, 2)), c, d, -(c * m(0, 2) + d * m(1, 2))};
}

cv::Matx23d estimate_similarity(const std::vector<cv::Point2d>& src, const std::vector<cv::Point2d>& dst) {
  const double n = static_cast<double>(src.size());
  cv::Point2d ms(0, 0), md(0, 0);
  for (size_t i = 0; i < src.size(); ++i) { ms += src[i]; md += dst[i]; }
  ms *= 1.0 / n; md *= 1.0 / n;
  double var = 0;
  cv::Matx22d cov = cv::Matx22d::zeros();
  for (size_t i = 0; i < src.size(); ++i) {
    cv::Point2d s = src[i] - ms, d = dst[i] - md;
    var += s.dot(s);
    cov(0, 0) += d.x * s.x; cov(0, 1) += d.x * s.y; cov(1, 0) += d.y * s.x; cov(1, 1) += d.y * s.y;
  }
  var /= n; cov *= 1.0 / n;
  if (var <= 0) throw std::runtime_error("degenerate points");
  cv::Mat w, u, vt;
  cv::SVD::compute(cv::Mat(cov), w, u, vt);
  double sign = cv::determinant(u) * cv::determinant(vt) < 0 ? -1.0 : 1.0;
  cv::Mat dm = cv::Mat::eye(2, 2, CV_64F);
  dm.at<double>(1, 1) = sign;
  cv::Mat r = u * dm * vt;
  double scale = (w.at<double>(0) + sign * w.at<double>(1)) / var;
  cv::Matx22d a = cv::Matx22d(r) * scale;
  cv::Point2d t = md - cv::Point2d(a(0, 0) * ms.x + a(0, 1) * ms.y, a(1, 0) * ms.x + a(1, 1) * ms.y);
  return {a(0, 0), a(0, 1), t.x, a(1, 0), a(1, 1), t.y};
}

// ------------------------------------------------------------------------------------ detector
Detector::Detector(ov::Core& core, const std::string& model_dir, float min_score, float nms_iou)
    : min_score_(min_score), nms_iou_(nms_iou) {
  json meta = read_json(model_dir + "/blazeface_short_range.json");
  auto cal = meta["calibration"];
  for (int i = 0; i < 5; ++i)
    for (int j = 0; j < 2; ++j) offsets_[i][j] = cal["five_point_offsets"][i][j].get<double>();
  for (int i = 0; i < 4; ++i) box_from_detector_[i] = cal["box_from_detector"][i].get<double>();
  auto model = core.read_model(model_dir + "/" + meta["model_file"].get<std::string>());
  model->reshape({1, 3, 128, 128});
  auto compiled = core.compile_model(model, "CPU",
                                     ov::hint::performance_mode(ov::hint::PerformanceMode::LATENCY),
                                     ov::hint::inference_precision(ov::element::f32), ov::inference_num_threads(1));
  request_ = compiled.create_infer_request();
}

cv::Rect2d Detector::face_box(const cv::Rect2d& b) const {
  double s = std::sqrt(std::max(b.width, 1e-6) * std::max(b.height, 1e-6));
  double cx = b.x + b.width / 2 + box_from_detector_[0] * s, cy = b.y + b.height / 2 + box_from_detector_[1] * s;
  double w = box_from_detector_[2] * s, h = box_from_detector_[3] * s;
  return {cx - w / 2, cy - h / 2, w, h};
}

std::vector<Face> Detector::detect(const cv::Mat& rgb) {
  const int S = 128;
  double s = std::min(double(S) / rgb.cols, double(S) / rgb.rows);
  int rw = std::clamp(int(std::lround(rgb.cols * s)), 1, S), rh = std::clamp(int(std::lround(rgb.rows * s)), 1, S);
  cv::Mat small, canvas = cv::Mat::zeros(S, S, CV_8UC3);
  cv::resize(rgb, small, {rw, rh}, 0, 0, (rw < rgb.cols || rh < rgb.rows) ? cv::INTER_AREA : cv::INTER_LINEAR);
  int ox = (S - rw) / 2, oy = (S - rh) / 2;
  small.copyTo(canvas(cv::Rect(ox, oy, rw, rh)));
  double sx = double(rw) / rgb.cols, sy = double(rh) / rgb.rows;  // frame -> canvas (continuous coordinates)

  ov::Tensor input = request_.get_input_tensor();
  float* x = input.data<float>();
  for (int c = 0; c < 3; ++c)
    for (int y = 0; y < S; ++y)
      for (int xx = 0; xx < S; ++xx) x[(c * S + y) * S + xx] = canvas.at<cv::Vec3b>(y, xx)[c] / 255.f;
  request_.infer();
  const float* scores = request_.get_tensor("scores").data<float>();
  const float* boxes = request_.get_tensor("boxes").data<float>();
  const float* kps = request_.get_tensor("keypoints").data<float>();

  // MediaPipe's weighted NMS
  std::vector<int> order;
  for (int i = 0; i < 896; ++i)
    if (scores[i] >= min_score_) order.push_back(i);
  std::sort(order.begin(), order.end(), [&](int a, int b) { return scores[a] > scores[b]; });
  auto rect = [&](int i) {
    return cv::Rect2d(boxes[i * 4], boxes[i * 4 + 1], boxes[i * 4 + 2] - boxes[i * 4], boxes[i * 4 + 3] - boxes[i * 4 + 1]);
  };
  std::vector<Face> faces;
  while (!order.empty()) {
    int top = order.front();
    std::vector<int> group, rest;
    for (int i : order) (i == top || iou(rect(top), rect(i)) > nms_iou_ ? group : rest).push_back(i);
    double wsum = 0, b[4] = {0, 0, 0, 0}, k[12] = {0};
    for (int i : group) {
      double w = scores[i];
      wsum += w;
      for (int j = 0; j < 4; ++j) b[j] += w * boxes[i * 4 + j];
      for (int j = 0; j < 12; ++j) k[j] += w * kps[i * 12 + j];
    }
    auto back = [&](double px, double py) { return cv::Point2d((px / wsum - ox) / sx, (py / wsum - oy) / sy); };
    Face f;
    f.score = scores[top];
    cv::Point2d p0 = back(b[0], b[1]), p1 = back(b[2], b[3]);
    f.box = {p0.x, p0.y, p1.x - p0.x, p1.y - p0.y};
    f.crop_box = face_box(f.box);
    cv::Point2d kp[6];
    for (int j = 0; j < 6; ++j) kp[j] = back(k[2 * j], k[2 * j + 1]);
    // FaRL's 5 points: BlazeFace eyes / nose / mouth centre + fitted offsets in the face's frame
    cv::Point2d u = kp[1] - kp[0], n(-u.y, u.x);
    const int base[5] = {0, 1, 2, 3, 3};
    for (int j = 0; j < 5; ++j) f.five[j] = kp[base[j]] + offsets_[j][0] * u + offsets_[j][1] * n;
    faces.push_back(f);
    order = rest;
  }
  return faces;
}

// ------------------------------------------------------------------------------------ model
Model::Model(ov::Core& core, const std::string& dir, int threads, const std::string& precision) {
  json m = read_json(dir + "/manifest.json");
  if (m.value("status", "") != "ok") throw std::runtime_error(dir + ": artifact status is not ok");
  task = m["task"].get<std::string>();
  name = m["name"].get<std::string>();
  size = m["input_size"].get<int>();
  auto pp = m["preprocess"];
  warp = pp.value("warp", "box");
  box_scale = pp.value("box_scale", 1.0);
  warp_factor = pp.value("warp_factor", 0.8);
  if (warp != "box" && warp != "similarity" && warp != "tanh" && warp != "ffhq")  // "full": whole images, no faces
    throw std::runtime_error(dir + ": preprocess warp '" + warp + "' is not supported by this face runtime");
  const std::string protocol = pp.value("protocol", "direct");
  if (protocol != "direct" && protocol != "farl")
    throw std::runtime_error(dir + ": unknown preprocess protocol '" + protocol + "'");
  if (protocol == "farl") { float_warp = true; tanh_shift = 0.5; atanh_clamp = 0.999; }
  if (m.contains("labels")) labels = m["labels"].get<std::vector<std::string>>();
  ov::AnyMap config = {ov::hint::performance_mode(ov::hint::PerformanceMode::LATENCY)};
  if (threads > 0) config.emplace(ov::inference_num_threads.name(), threads);
  if (precision != "default") config.emplace(ov::hint::inference_precision.name(), precision);
  compiled_ = core.compile_model(dir + "/" + m["model_file"].get<std::string>(), "CPU", config);
  request_ = compiled_.create_infer_request();
}

cv::Matx23d Model::crop_matrix(const Face& f) const {
  if (warp == "box") {  // farl_edge.geometry.box_matrix
    double side = std::max(f.crop_box.width, f.crop_box.height) * box_scale;
    double s = size / side, cx = f.crop_box.x + f.crop_box.width / 2, cy = f.crop_box.y + f.crop_box.height / 2;
    return {s, 0, size / 2.0 - s * cx, 0, s, size / 2.0 - s * cy};
  }
  std::vector<cv::Point2d> src(f.five.begin(), f.five.end()), dst;
  if (warp == "ffhq") {  // farl_edge.geometry.ffhq_matrix: the FFHQ / CelebA-HQ square from 5 points
    auto rot90 = [](cv::Point2d v) { return cv::Point2d(-v.y, v.x); };
    cv::Point2d eye = (src[0] + src[1]) * 0.5, mouth = (src[3] + src[4]) * 0.5;
    cv::Point2d e2e = src[1] - src[0], e2m = mouth - eye, x = e2e - rot90(e2m);
    x *= std::max(std::hypot(e2e.x, e2e.y) * 2.0, std::hypot(e2m.x, e2m.y) * 1.8) / std::hypot(x.x, x.y);
    cv::Point2d y = rot90(x), c = eye + e2m * 0.1;
    std::vector<cv::Point2d> quad = {c - x - y, c + x - y, c + x + y, c - x + y};
    dst = {{0.0, 0.0}, {double(size), 0.0}, {double(size), double(size)}, {0.0, double(size)}};
    return estimate_similarity(quad, dst);
  }
  for (auto& t : kTemplate512) dst.emplace_back(t[0] * size / 512.0, t[1] * size / 512.0);
  return estimate_similarity(src, dst);
}

// one axis of the tanh warp, aligned-crop coordinate ↔ model-input coordinate (geometry.py)
double Model::warp_tanh(double c) const {
  return (tanh_forward((c - tanh_shift) / size * 2 - 1, warp_factor) + 1) / 2 * size + tanh_shift;
}

double Model::unwarp_tanh(double c) const {
  return (tanh_inverse((c - tanh_shift) / size * 2 - 1, warp_factor, atanh_clamp) + 1) / 2 * size + tanh_shift;
}

cv::Mat Model::warp_input(const cv::Mat& rgb, const cv::Matx23d& m) const {
  cv::Mat out;
  if (warp != "tanh") {
    cv::warpAffine(rgb, out, to_cv(m), {size, size}, cv::INTER_LINEAR, cv::BORDER_CONSTANT, cv::Scalar::all(0));
    return out;
  }
  cv::Mat mx(size, size, CV_32F), my(size, size, CV_32F);
  cv::Matx23d inv = invert(m);
  float lim = float(std::max(rgb.cols, rgb.rows) + 16);
  for (int y = 0; y < size; ++y)
    for (int x = 0; x < size; ++x) {
      double ax = unwarp_tanh(x + 0.5), ay = unwarp_tanh(y + 0.5);
      cv::Point2d p = apply(inv, {ax, ay});
      mx.at<float>(y, x) = std::clamp(float(p.x - 0.5), -16.f, lim);
      my.at<float>(y, x) = std::clamp(float(p.y - 0.5), -16.f, lim);
    }
  cv::remap(rgb, out, mx, my, cv::INTER_LINEAR, cv::BORDER_CONSTANT, cv::Scalar::all(0));
  return out;
}

void Model::label_map(const float* logits, int classes, int h, int w, Face& f, cv::Size frame) const {
  // region of the frame the crop covers (+1 input pixel); tanh crops: the aligned square x2
  double r = warp == "tanh" ? 2.0 : 1.0, c = size / 2.0, half = size / 2.0 * r + 1.0;
  cv::Matx23d inv = invert(f.matrix);
  double x0 = 1e18, y0 = 1e18, x1 = -1e18, y1 = -1e18;
  for (double dx : {-half, half})
    for (double dy : {-half, half}) {
      cv::Point2d p = apply(inv, {c + dx, c + dy});
      x0 = std::min(x0, p.x); y0 = std::min(y0, p.y); x1 = std::max(x1, p.x); y1 = std::max(y1, p.y);
    }
  int rx0 = std::max(0, int(std::floor(x0))), ry0 = std::max(0, int(std::floor(y0)));
  int rx1 = std::min(frame.width, int(std::ceil(x1))), ry1 = std::min(frame.height, int(std::ceil(y1)));
  if (rx1 <= rx0 || ry1 <= ry0) return;
  int rw = rx1 - rx0, rh = ry1 - ry0;
  // where each region pixel centre lands in the model input
  cv::Mat mx(rh, rw, CV_32F), my(rh, rw, CV_32F);
  for (int y = 0; y < rh; ++y)
    for (int x = 0; x < rw; ++x) {
      cv::Point2d q = apply(f.matrix, {rx0 + x + 0.5, ry0 + y + 0.5});
      if (warp == "tanh") {
        q.x = warp_tanh(q.x);
        q.y = warp_tanh(q.y);
      }
      mx.at<float>(y, x) = std::clamp(float(q.x - 0.5), -16.f, float(size + 16));
      my.at<float>(y, x) = std::clamp(float(q.y - 0.5), -16.f, float(size + 16));
    }
  // scores upsampled to the input size, sampled bilinearly at those points (0 outside), argmax
  cv::Mat best(rh, rw, CV_32F, cv::Scalar(-1e30f)), label = cv::Mat::zeros(rh, rw, CV_8U);
  for (int k = 0; k < classes; ++k) {
    cv::Mat plane(h, w, CV_32F, const_cast<float*>(logits + size_t(k) * h * w)), up, s;
    cv::resize(plane, up, {size, size}, 0, 0, cv::INTER_LINEAR);
    cv::remap(up, s, mx, my, cv::INTER_LINEAR, cv::BORDER_CONSTANT, cv::Scalar(0));
    cv::Mat better = s > best;
    s.copyTo(best, better);
    label.setTo(k, better);
  }
  f.label_map = label;
  f.label_origin = {rx0, ry0};
}

void Model::run(const cv::Mat& rgb, std::vector<Face>& faces, Timings& t) {
  if (faces.empty()) return;
  auto t0 = Clock::now();
  const size_t n = faces.size();
  const bool dynamic_batch = compiled_.input().get_partial_shape()[0].is_dynamic();
  ov::Tensor input(ov::element::f32, {dynamic_batch ? n : 1, 3, size_t(size), size_t(size)});
  std::vector<cv::Mat> crops;
  cv::Mat src = rgb;
  if (float_warp) rgb.convertTo(src, CV_32FC3, 1.0 / 255);  // FaRL: [0, 1] before the warp, never rounded
  for (auto& f : faces) {
    f.matrix = crop_matrix(f);
    crops.push_back(warp_input(src, f.matrix));
  }
  auto fill = [&](size_t slot, const cv::Mat& crop) {
    float* x = input.data<float>() + slot * 3 * size * size;
    for (int y = 0; y < size; ++y)
      for (int xx = 0; xx < size; ++xx)
        for (int c = 0; c < 3; ++c)
          x[(c * size + y) * size + xx] = float_warp ? crop.at<cv::Vec3f>(y, xx)[c] : crop.at<cv::Vec3b>(y, xx)[c] / 255.f;
  };
  t.preprocess += ms_since(t0);
  for (size_t start = 0; start < n; start += dynamic_batch ? n : 1) {
    auto t1 = Clock::now();
    size_t count = dynamic_batch ? n : 1;
    for (size_t i = 0; i < count; ++i) fill(i, crops[start + i]);
    request_.set_input_tensor(input);
    request_.infer();
    t.infer += ms_since(t1);
    auto t2 = Clock::now();
    for (size_t i = 0; i < count; ++i) {
      Face& f = faces[start + i];
      if (task == "alignment") {
        ov::Tensor lm = request_.get_tensor("landmarks");
        size_t k = lm.get_shape()[1];
        const float* p = lm.data<float>() + i * k * 2;
        cv::Matx23d inv = invert(f.matrix);
        f.landmarks.clear();
        for (size_t j = 0; j < k; ++j) {
          cv::Point2d q(p[2 * j], p[2 * j + 1]);
          if (warp == "tanh") {
            q.x = unwarp_tanh(q.x);
            q.y = unwarp_tanh(q.y);
          }
          f.landmarks.push_back(apply(inv, q));
        }
      } else if (task == "parsing") {
        ov::Tensor lg = request_.get_tensor("logits");
        auto sh = lg.get_shape();  // (B, C, h, w)
        label_map(lg.data<float>() + i * sh[1] * sh[2] * sh[3], int(sh[1]), int(sh[2]), int(sh[3]), f, rgb.size());
      }
    }
    t.postprocess += ms_since(t2);
  }
}

// ------------------------------------------------------------------------------------ drawing
void draw(cv::Mat& bgr, const std::vector<Face>& faces, const Model& model, const Timings& t, double fps) {
  const int classes = std::max<int>(1, int(model.labels.size()));
  std::vector<cv::Vec3b> colors(classes);
  for (int i = 1; i < classes; ++i) {  // same palette as farl_edge/runtime/draw.py (BGR here)
    double hue = std::fmod(i * 0.61803398875, 1.0);
    cv::Mat hsv(1, 1, CV_8UC3, cv::Scalar(int(hue * 179), i % 2 ? 200 : 255, i % 3 ? 255 : 200)), rgb;
    cv::cvtColor(hsv, rgb, cv::COLOR_HSV2RGB);
    auto v = rgb.at<cv::Vec3b>(0, 0);
    colors[i] = {v[2], v[1], v[0]};
  }
  for (const auto& f : faces) {
    if (!f.label_map.empty()) {
      cv::Rect roi(f.label_origin, f.label_map.size());
      roi &= cv::Rect(0, 0, bgr.cols, bgr.rows);
      cv::Mat region = bgr(roi);
      for (int y = 0; y < roi.height; ++y)
        for (int x = 0; x < roi.width; ++x) {
          uchar k = f.label_map.at<uchar>(y, x);
          if (k == 0 || k >= classes) continue;
          cv::Vec3b& p = region.at<cv::Vec3b>(y, x);
          for (int c = 0; c < 3; ++c) p[c] = cv::saturate_cast<uchar>(0.5 * p[c] + 0.5 * colors[k][c]);
        }
    }
    cv::rectangle(bgr, cv::Rect(cvRound(f.box.x - 0.5), cvRound(f.box.y - 0.5), cvRound(f.box.width), cvRound(f.box.height)),
                  {255, 200, 0}, 1, cv::LINE_AA);
    for (const auto& p : f.landmarks) cv::circle(bgr, {cvRound(p.x - 0.5), cvRound(p.y - 0.5)}, 2, {0, 255, 0}, -1, cv::LINE_AA);
  }
  char text[256];
  std::snprintf(text, sizeof text, "%.1f FPS  det %.1f  pre %.1f  inf %.1f  post %.1f ms", fps, t.detect, t.preprocess,
                t.infer, t.postprocess);
  cv::putText(bgr, text, {8, 20}, cv::FONT_HERSHEY_SIMPLEX, 0.5, {0, 0, 0}, 3, cv::LINE_AA);
  cv::putText(bgr, text, {8, 20}, cv::FONT_HERSHEY_SIMPLEX, 0.5, {255, 255, 255}, 1, cv::LINE_AA);
}

}  // namespace farl
