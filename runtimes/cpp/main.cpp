// farl_camera: camera / video → BlazeFace → FaRL model (an exported farl-edge artifact) → overlay.
//
//   farl_camera --model ARTIFACT_DIR --detector DETECTOR_DIR [--source 0|video.mp4] [--output out.avi]
//               [--no-show] [--max-frames N] [--threads N] [--precision f32] [--verbose] [--json out.jsonl]
//
// --json: one JSON object per frame (JSON Lines): every face's score, box, 5 points, crop matrix
// (frame -> model input), landmarks and label map, in frame coordinates at full precision
// (tests/test_cpp_runtime.py compares them with the Python runtime).
//
// Cameras: a reader thread keeps only the newest frame (stale frames are dropped, so the overlay
// never lags behind the camera). Video files: every frame is processed in order.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include <nlohmann/json.hpp>
#include <opencv2/highgui.hpp>
#include <opencv2/imgproc.hpp>
#include <opencv2/videoio.hpp>

#include "face_pipeline.hpp"

namespace {

struct Args {
  std::string model, detector, source = "0", output, json;
  bool show = true, verbose = false;
  std::string precision = "default";
  long max_frames = -1;
  int threads = 0;
};

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string k = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) throw std::runtime_error(k + " needs a value");
      return argv[++i];
    };
    if (k == "--model") a.model = next();
    else if (k == "--detector") a.detector = next();
    else if (k == "--source") a.source = next();
    else if (k == "--output") a.output = next();
    else if (k == "--no-show") a.show = false;
    else if (k == "--max-frames") a.max_frames = std::stol(next());
    else if (k == "--threads") a.threads = std::stoi(next());
    else if (k == "--precision") a.precision = next();
    else if (k == "--verbose") a.verbose = true;
    else if (k == "--json") a.json = next();
    else throw std::runtime_error("unknown argument " + k);
  }
  if (a.model.empty() || a.detector.empty())
    throw std::runtime_error("usage: farl_camera --model ARTIFACT_DIR --detector DETECTOR_DIR [--source 0|FILE] "
                             "[--output FILE.avi] [--no-show] [--max-frames N] [--threads N] [--precision f32|bf16|f16] "
                             "[--verbose] [--json FILE.jsonl]");
  return a;
}

// One frame's results as JSON: boxes x0 y0 x1 y1, points (x, y), label maps as rows of class ids.
nlohmann::json frame_json(long index, const cv::Mat& frame, const std::vector<farl::Face>& faces) {
  using nlohmann::json;
  auto point = [](const cv::Point2d& p) { return json::array({p.x, p.y}); };
  json out = {{"frame", index}, {"frame_hw", {frame.rows, frame.cols}}, {"faces", json::array()}};
  for (const auto& f : faces) {
    json face = {{"score", f.score},
                 {"box", {f.box.x, f.box.y, f.box.x + f.box.width, f.box.y + f.box.height}},
                 {"five_points", json::array()},
                 {"matrix", {{f.matrix(0, 0), f.matrix(0, 1), f.matrix(0, 2)},
                             {f.matrix(1, 0), f.matrix(1, 1), f.matrix(1, 2)}}}};
    for (const auto& p : f.five) face["five_points"].push_back(point(p));
    if (!f.landmarks.empty()) {
      face["landmarks"] = json::array();
      for (const auto& p : f.landmarks) face["landmarks"].push_back(point(p));
    }
    if (!f.label_map.empty()) {
      face["label_origin"] = {f.label_origin.x, f.label_origin.y};
      json rows = json::array();
      for (int y = 0; y < f.label_map.rows; ++y) {
        const uchar* r = f.label_map.ptr<uchar>(y);
        rows.push_back(std::vector<int>(r, r + f.label_map.cols));
      }
      face["label_map"] = std::move(rows);
    }
    out["faces"].push_back(std::move(face));
  }
  return out;
}

// Newest-frame slot filled by a reader thread (live cameras).
class LatestFrame {
 public:
  explicit LatestFrame(cv::VideoCapture& cap) : cap_(cap), thread_([this] { loop(); }) {}
  ~LatestFrame() { stop_ = true; thread_.join(); }
  bool get(cv::Mat& out) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return fresh_ || ended_; });
    if (!fresh_) return false;
    out = frame_;
    fresh_ = false;
    return true;
  }
  long dropped() const { return dropped_; }

 private:
  void loop() {
    cv::Mat f;
    while (!stop_ && cap_.read(f)) {
      std::lock_guard<std::mutex> lock(mu_);
      if (fresh_) ++dropped_;
      f.copyTo(frame_);
      fresh_ = true;
      cv_.notify_one();
    }
    std::lock_guard<std::mutex> lock(mu_);
    ended_ = true;
    cv_.notify_one();
  }
  cv::VideoCapture& cap_;
  std::mutex mu_;
  std::condition_variable cv_;
  cv::Mat frame_;
  bool fresh_ = false, ended_ = false;
  std::atomic<bool> stop_{false};
  std::atomic<long> dropped_{0};
  std::thread thread_;
};

}  // namespace

int main(int argc, char** argv) try {
  Args args = parse(argc, argv);
  ov::Core core;
  farl::Detector detector(core, args.detector);
  farl::Model model(core, args.model, args.threads, args.precision);
  std::cout << "model " << model.name << " (" << model.task << ", " << model.size << " px, " << model.warp << " crops)\n";

  const bool live = !args.source.empty() && std::all_of(args.source.begin(), args.source.end(), ::isdigit);
  cv::VideoCapture cap = live ? cv::VideoCapture(std::stoi(args.source)) : cv::VideoCapture(args.source);
  if (!cap.isOpened()) throw std::runtime_error("cannot open source " + args.source);
  std::unique_ptr<LatestFrame> latest = live ? std::make_unique<LatestFrame>(cap) : nullptr;
  cv::VideoWriter writer;
  std::ofstream json_out;
  if (!args.json.empty()) {
    json_out.open(args.json);
    if (!json_out) throw std::runtime_error("cannot write " + args.json);
  }
  double src_fps = cap.get(cv::CAP_PROP_FPS) > 0 ? cap.get(cv::CAP_PROP_FPS) : 25.0;

  farl::Timings sum;
  double fps = 0;
  long frames = 0, faces_total = 0;
  auto last = std::chrono::steady_clock::now();
  cv::Mat bgr, rgb;
  while (args.max_frames < 0 || frames < args.max_frames) {
    if (!(latest ? latest->get(bgr) : cap.read(bgr))) break;
    if (bgr.empty()) continue;
    if (bgr.channels() == 1) cv::cvtColor(bgr, bgr, cv::COLOR_GRAY2BGR);
    if (bgr.channels() == 4) cv::cvtColor(bgr, bgr, cv::COLOR_BGRA2BGR);
    farl::Timings t;
    auto t0 = std::chrono::steady_clock::now();
    cv::cvtColor(bgr, rgb, cv::COLOR_BGR2RGB);
    auto faces = detector.detect(rgb);
    t.detect = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    model.run(rgb, faces, t);
    auto now = std::chrono::steady_clock::now();
    double dt = std::chrono::duration<double>(now - last).count();
    last = now;
    fps = fps == 0 ? 1.0 / std::max(dt, 1e-6) : 0.9 * fps + 0.1 / std::max(dt, 1e-6);
    if (args.verbose) {
      for (const auto& f : faces) {
        std::printf("frame %ld face %.2f box %.2f %.2f %.2f %.2f five", frames, f.score, f.box.x, f.box.y,
                    f.box.x + f.box.width, f.box.y + f.box.height);
        for (const auto& p : f.five) std::printf(" %.2f %.2f", p.x, p.y);
        if (!f.landmarks.empty()) std::printf(" lm0 %.3f %.3f", f.landmarks[0].x, f.landmarks[0].y);
        if (!f.label_map.empty())
          std::printf(" labels at %d %d size %d %d nonzero %d", f.label_origin.x, f.label_origin.y, f.label_map.cols,
                      f.label_map.rows, cv::countNonZero(f.label_map));
        std::printf("\n");
      }
    }
    if (json_out.is_open()) json_out << frame_json(frames, bgr, faces).dump() << "\n" << std::flush;
    farl::draw(bgr, faces, model, t, fps);
    ++frames;
    faces_total += long(faces.size());
    sum.detect += t.detect; sum.preprocess += t.preprocess; sum.infer += t.infer; sum.postprocess += t.postprocess;
    if (!args.output.empty()) {
      if (!writer.isOpened() &&
          !writer.open(args.output, cv::VideoWriter::fourcc('M', 'J', 'P', 'G'), src_fps, bgr.size()))
        throw std::runtime_error("cannot write " + args.output);
      writer.write(bgr);
    }
    if (args.show) {
      cv::imshow("farl-edge", bgr);
      int key = cv::waitKey(1);
      if (key == 'q' || key == 27) break;
    }
  }
  if (frames) {
    std::printf("%ld frames, %ld faces; mean ms: detect %.1f, preprocess %.1f, infer %.1f, postprocess %.1f%s\n",
                frames, faces_total, sum.detect / frames, sum.preprocess / frames, sum.infer / frames,
                sum.postprocess / frames, latest ? (", dropped " + std::to_string(latest->dropped())).c_str() : "");
  }
  return 0;
} catch (const std::exception& e) {
  std::cerr << "farl_camera: " << e.what() << "\n";
  return 1;
}
