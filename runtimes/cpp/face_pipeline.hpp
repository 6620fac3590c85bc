// farl-edge face pipeline in C++ (OpenVINO + OpenCV): the same steps as
// farl_edge/runtime/pipeline.py — BlazeFace detection, FaRL's 5 points, crop matrix from the
// artifact's manifest "preprocess", one batched inference, results back in frame coordinates.
//
// Coordinates are continuous (pixel i spans [i, i+1)), as in farl_edge/geometry.py; OpenCV calls
// convert with M_cv = T(-0.5) * M * T(+0.5).
#pragma once

#include <array>
#include <string>
#include <vector>

#include <opencv2/core.hpp>
#include <openvino/openvino.hpp>

namespace farl {

struct Face {
  cv::Rect2d box;                      // detector box (x, y, w, h)
  cv::Rect2d crop_box;                 // landmark-style box that alignment (box) crops are made around
  float score = 0.f;
  std::array<cv::Point2d, 5> five{};   // eye centres, nose tip, mouth corners (image-left first)
  cv::Matx23d matrix;                  // frame -> model input
  std::vector<cv::Point2d> landmarks;  // alignment models, frame coordinates
  cv::Mat label_map;                   // parsing models: CV_8U, region `label_origin` of the frame
  cv::Point label_origin{0, 0};
};

struct Timings {
  double detect = 0, preprocess = 0, infer = 0, postprocess = 0;
  double total() const { return detect + preprocess + infer + postprocess; }
};

class Detector {
 public:
  // model_dir: farl_edge/data/detector (blazeface_short_range.onnx + .json)
  Detector(ov::Core& core, const std::string& model_dir, float min_score = 0.5f, float nms_iou = 0.3f);
  std::vector<Face> detect(const cv::Mat& rgb);

 private:
  cv::Rect2d face_box(const cv::Rect2d& det_box) const;
  ov::InferRequest request_;
  float min_score_, nms_iou_;
  std::array<std::array<double, 2>, 5> offsets_{};  // calibration "five_point_offsets"
  std::array<double, 4> box_from_detector_{};      // calibration "box_from_detector"
};

class Model {
 public:
  // artifact_dir: an exported artifact folder (manifest.json + model.onnx / model.xml)
  // precision: "default" (OpenVINO's choice: bf16 on AMX CPUs), "f32", "bf16", "f16"
  Model(ov::Core& core, const std::string& artifact_dir, int threads = 0, const std::string& precision = "default");
  // Fills landmarks / label maps of `faces`; `rgb` is the frame.
  void run(const cv::Mat& rgb, std::vector<Face>& faces, Timings& t);

  std::string task, name, warp = "box";
  int size = 224;
  double box_scale = 1.0, warp_factor = 0.8;
  // manifest preprocess.protocol "farl": float warp (pixels / 255 first) and the tanh warp on
  // FaRL's pixel-index grid (origin shift 0.5, atanh clamp 0.999); "direct": uint8, continuous grid
  bool float_warp = false;
  double tanh_shift = 0.0, atanh_clamp = 1.0 - 1e-9;
  std::vector<std::string> labels;

 private:
  cv::Matx23d crop_matrix(const Face& f) const;
  cv::Mat warp_input(const cv::Mat& rgb, const cv::Matx23d& m) const;
  double warp_tanh(double c) const;
  double unwarp_tanh(double c) const;
  void label_map(const float* logits, int classes, int h, int w, Face& f, cv::Size frame) const;
  ov::CompiledModel compiled_;
  ov::InferRequest request_;
};

// Similarity (rotation + uniform scale + translation) mapping src onto dst, Umeyama's method.
cv::Matx23d estimate_similarity(const std::vector<cv::Point2d>& src, const std::vector<cv::Point2d>& dst);
cv::Matx23d invert(const cv::Matx23d& m);
cv::Point2d apply(const cv::Matx23d& m, const cv::Point2d& p);

void draw(cv::Mat& bgr, const std::vector<Face>& faces, const Model& model, const Timings& t, double fps);

}  // namespace farl
