// Detectors, classifiers, the pipeline and reports for Python, with trampolines so that a detector or
// classifier written in Python plugs into the C++ pipeline.
#include <filesystem>

#include "conversions.hpp"

namespace bloodcv::python {

namespace {

// A numpy image as a cv::Mat: uint8/uint16/float32, (H, W) or (H, W, C), BGR order; no copy.
cv::Mat image_of(const py::array& image) { return mat_view(image); }

std::vector<Detection> detections_from_python(const py::handle& item, std::size_t index) {
  py::object boxes, scores, labels, ious = py::none();
  if (py::isinstance<py::dict>(item)) {
    const py::dict d = py::reinterpret_borrow<py::dict>(item);
    boxes = d["boxes"];
    scores = d["scores"];
    labels = d.contains("labels") ? d["labels"] : py::none();
    if (d.contains("predicted_ious")) ious = d["predicted_ious"];
  } else {
    const py::tuple t = py::cast<py::tuple>(item);
    if (t.size() < 2 || t.size() > 3)
      throw py::value_error(fmt::format("detect() result {} must be (boxes, scores[, labels]) or a dict, got {} items", index, t.size()));
    boxes = t[0];
    scores = t[1];
    labels = t.size() > 2 ? py::object(t[2]) : py::none();
  }
  auto dets = detections_of(py::cast<FloatArray>(boxes), py::cast<FloatArray>(scores),
                            labels.is_none() ? std::nullopt : std::optional<LabelArray>(py::cast<LabelArray>(labels)));
  if (!ious.is_none()) {
    const auto values = py::cast<FloatArray>(ious);
    if (static_cast<std::size_t>(values.size()) != dets.size())
      throw py::value_error(fmt::format("detect() result {}: predicted_ious has {} entries for {} boxes", index, values.size(), dets.size()));
    for (std::size_t i = 0; i < dets.size(); ++i) dets[i].predicted_iou = values.data()[i];
  }
  return dets;
}

// Lets a Python class implement Detector: detect(images) returns, per image, (boxes, scores, labels)
// or {"boxes", "scores", "labels"[, "predicted_ious"]}; labels() a list of names; input_size() (w, h).
class PyDetector : public Detector {
 public:
  std::vector<std::vector<Detection>> detect(const std::vector<cv::Mat>& images) const override {
    py::gil_scoped_acquire gil;
    const py::function override = py::get_override(static_cast<const Detector*>(this), "detect");
    if (!override) throw std::runtime_error("a Python Detector must implement detect(images)");
    py::list batch;
    for (const cv::Mat& image : images) batch.append(mat_to_numpy(image));
    const py::object result = override(batch);
    std::vector<std::vector<Detection>> out;
    std::size_t i = 0;
    for (const py::handle item : result) out.push_back(detections_from_python(item, i++));
    return out;
  }
  std::vector<std::string> labels() const override { PYBIND11_OVERRIDE_PURE(std::vector<std::string>, Detector, labels, ); }
  cv::Size input_size() const override {
    py::gil_scoped_acquire gil;
    const py::function override = py::get_override(static_cast<const Detector*>(this), "input_size");
    if (!override) throw std::runtime_error("a Python Detector must implement input_size()");
    const auto size = py::cast<std::pair<int, int>>(override());
    return {size.first, size.second};
  }
};

// Lets a Python class implement Classifier: classify(image, boxes) returns per box either class
// probabilities ([N, K] array) or a dict with "probabilities"; labels() a list of names.
class PyClassifier : public Classifier {
 public:
  std::vector<Classification> classify(const cv::Mat& image, const std::vector<Box>& boxes) const override {
    py::gil_scoped_acquire gil;
    const py::function override = py::get_override(static_cast<const Classifier*>(this), "classify");
    if (!override) throw std::runtime_error("a Python Classifier must implement classify(image, boxes)");
    std::vector<Box> copy = boxes;
    py::object result = override(mat_to_numpy(image), boxes_to_numpy(std::move(copy)));
    if (py::isinstance<py::dict>(result)) result = result["probabilities"];
    const auto probs = py::cast<FloatArray>(result);
    if (probs.ndim() != 2 || static_cast<std::size_t>(probs.shape(0)) != boxes.size())
      throw py::value_error(fmt::format("classify() must return probabilities of shape ({}, K), got {}", boxes.size(), shape_of(probs)));
    std::vector<Classification> out(boxes.size());
    const auto k = static_cast<std::size_t>(probs.shape(1));
    for (std::size_t i = 0; i < out.size(); ++i) {
      const float* p = probs.data() + i * k;
      out[i].probabilities.assign(p, p + k);
      out[i].label = std::max_element(p, p + k) - p;
      out[i].score = p[out[i].label];
    }
    return out;
  }
  std::vector<std::string> labels() const override { PYBIND11_OVERRIDE_PURE(std::vector<std::string>, Classifier, labels, ); }
};

RuntimeOptions runtime_options(const std::string& device, bool half, int batch_size) { return RuntimeOptions{device, half, batch_size}; }

// Per-cell columns of a result as numpy arrays; unclassified cells have type -1 and score NaN.
py::dict result_arrays(const AnalysisResult& r) {
  const std::size_t n = r.cells.size(), k = r.classifier_labels.size();
  std::vector<Box> boxes(n);
  std::vector<float> scores(n), type_scores(n, std::numeric_limits<float>::quiet_NaN());
  std::vector<std::int64_t> labels(n), types(n, -1);
  py::array_t<float> probabilities({static_cast<py::ssize_t>(n), static_cast<py::ssize_t>(k)});
  float* p = probabilities.mutable_data();
  std::fill(p, p + n * k, std::numeric_limits<float>::quiet_NaN());
  for (std::size_t i = 0; i < n; ++i) {
    const Cell& c = r.cells[i];
    boxes[i] = c.detection.box;
    scores[i] = c.detection.score;
    labels[i] = c.detection.label;
    if (c.type) {
      types[i] = c.type->label;
      type_scores[i] = c.type->score;
      std::copy_n(c.type->probabilities.begin(), std::min(k, c.type->probabilities.size()), p + i * k);
    }
  }
  py::dict out;
  out["boxes"] = boxes_to_numpy(std::move(boxes));
  out["scores"] = to_numpy(std::move(scores));
  out["labels"] = to_numpy(std::move(labels));
  out["types"] = to_numpy(std::move(types));
  out["type_scores"] = to_numpy(std::move(type_scores));
  out["type_probabilities"] = probabilities;
  return out;
}

}  // namespace

void bind_runtime(py::module_& m) {
  m.def(
      "read_image", [](const std::string& path) { return mat_to_numpy(read_image(path)); }, py::arg("path"),
      "Reads an image file as 8-bit BGR (H, W, 3) numpy, converting gray, BGRA and 16-bit images.");

  py::class_<Detector, PyDetector, std::shared_ptr<Detector>>(m, "Detector",
                                                              "Base class of detectors; subclass it in Python to plug in your own.")
      .def(py::init<>())
      .def(
          "detect",
          [](const Detector& self, const std::vector<py::array>& images) {
            std::vector<cv::Mat> mats;
            for (const auto& im : images) mats.push_back(image_of(im));
            std::vector<std::vector<Detection>> results;
            {
              py::gil_scoped_release release;
              results = self.detect(mats);
            }
            py::list out;
            for (const auto& r : results) out.append(detections_to_dict(r));
            return out;
          },
          py::arg("images"), "Detections per image: dicts of boxes (N, 4), scores, labels[, predicted_ious].")
      .def("labels", &Detector::labels)
      .def("input_size", [](const Detector& self) {
        const cv::Size s = self.input_size();
        return py::make_tuple(s.width, s.height);
      })
      .def(
          "tile_size",
          [](const Detector& self) {
            const cv::Size s = self.tile_size();
            return py::make_tuple(s.width, s.height);
          },
          "The image area one input should cover (the training scale): the default tile size.");

  py::class_<TorchScriptDetector, Detector, std::shared_ptr<TorchScriptDetector>>(m, "TorchScriptDetector")
      .def(py::init([](const std::string& path, const std::string& device, bool half, int batch_size, std::optional<float> score_threshold,
                       std::optional<double> nms_iou_threshold) {
             return std::make_shared<TorchScriptDetector>(
                 path, TorchScriptDetectorOptions{runtime_options(device, half, batch_size), score_threshold, nms_iou_threshold});
           }),
           py::arg("path"), py::arg("device") = "cpu", py::arg("half") = false, py::arg("batch_size") = 8,
           py::arg("score_threshold") = py::none(), py::arg("nms_iou_threshold") = py::none(), py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("metadata_json", &TorchScriptDetector::metadata_json);

  py::class_<Classifier, PyClassifier, std::shared_ptr<Classifier>>(m, "Classifier",
                                                                    "Base class of classifiers; subclass it in Python to plug in your own.")
      .def(py::init<>())
      .def(
          "classify",
          [](const Classifier& self, const py::array& image, const FloatArray& boxes) {
            const cv::Mat mat = image_of(image);
            const auto span = box_span(boxes, "boxes");
            const std::vector<Box> list(span.begin(), span.end());
            std::vector<Classification> results;
            {
              py::gil_scoped_release release;
              results = self.classify(mat, list);
            }
            const std::size_t k = results.empty() ? self.labels().size() : results.front().probabilities.size();
            std::vector<std::int64_t> labels;
            std::vector<float> scores;
            py::array_t<float> probabilities({static_cast<py::ssize_t>(results.size()), static_cast<py::ssize_t>(k)});
            for (std::size_t i = 0; i < results.size(); ++i) {
              labels.push_back(results[i].label);
              scores.push_back(results[i].score);
              std::copy_n(results[i].probabilities.begin(), k, probabilities.mutable_data() + i * k);
            }
            py::dict out;
            out["labels"] = to_numpy(std::move(labels));
            out["scores"] = to_numpy(std::move(scores));
            out["probabilities"] = probabilities;
            return out;
          },
          py::arg("image"), py::arg("boxes"), "Per box: labels, scores and probabilities (N, K).")
      .def("labels", &Classifier::labels);

  py::class_<TorchScriptClassifier, Classifier, std::shared_ptr<TorchScriptClassifier>>(m, "TorchScriptClassifier")
      .def(py::init([](const std::string& path, const std::string& device, bool half, int batch_size, std::optional<float> crop_padding) {
             return std::make_shared<TorchScriptClassifier>(path,
                                                            TorchScriptClassifierOptions{runtime_options(device, half, batch_size), crop_padding});
           }),
           py::arg("path"), py::arg("device") = "cpu", py::arg("half") = false, py::arg("batch_size") = 32, py::arg("crop_padding") = py::none(),
           py::call_guard<py::gil_scoped_release>())
      .def("input_size", [](const TorchScriptClassifier& self) { return py::make_tuple(self.input_size().width, self.input_size().height); })
      .def_property_readonly("metadata_json", &TorchScriptClassifier::metadata_json);

  py::class_<AnalysisResult>(m, "AnalysisResult", "One image's cells, counts, differential and timings.")
      .def_property_readonly("image_size", [](const AnalysisResult& r) { return py::make_tuple(r.image_size.width, r.image_size.height); })
      .def_readonly("tiles", &AnalysisResult::tiles)
      .def_readonly("detector_labels", &AnalysisResult::detector_labels)
      .def_readonly("classifier_labels", &AnalysisResult::classifier_labels)
      .def_readonly("counts", &AnalysisResult::counts)
      .def_readonly("type_counts", &AnalysisResult::type_counts)
      .def_readonly("differential", &AnalysisResult::differential)
      .def_property_readonly("timings_ms",
                             [](const AnalysisResult& r) {
                               const StageTimings& t = r.timings;
                               return py::dict(py::arg("tiling") = t.tiling_ms, py::arg("detection") = t.detection_ms,
                                               py::arg("merging") = t.merging_ms, py::arg("classification") = t.classification_ms,
                                               py::arg("total") = t.total_ms);
                             })
      .def("arrays", &result_arrays,
           "Per-cell numpy arrays: boxes, scores, labels, types (-1: not classified), type_scores, type_probabilities.")
      .def("__len__", [](const AnalysisResult& r) { return r.cells.size(); })
      .def("to_json", [](const AnalysisResult& r, const std::string& image_path) { return to_json(r, image_path); }, py::arg("image_path") = "")
      .def("to_csv", &to_csv)
      .def("to_coco", &to_coco_results, py::arg("image_id"))
      .def(
          "overlay", [](const AnalysisResult& r, const py::array& image) { return mat_to_numpy(draw_overlay(image_of(image), r)); }, py::arg("image"),
          "The image (BGR) with every cell drawn.")
      .def(
          "write",
          [](const AnalysisResult& r, const py::array& image, const std::string& out_dir, const std::string& stem, std::int64_t image_id) {
            const ReportPaths p = write_reports(image_of(image), r, out_dir, stem, image_id);
            return py::dict(py::arg("overlay") = p.overlay, py::arg("json") = p.json, py::arg("csv") = p.csv, py::arg("coco") = p.coco);
          },
          py::arg("image"), py::arg("out_dir"), py::arg("stem"), py::arg("image_id") = 1,
          "Writes STEM.overlay.jpg, STEM.json, STEM.csv, STEM.coco.json to out_dir; returns their paths.")
      .def("__repr__", [](const AnalysisResult& r) {
        std::string counts;
        for (const auto& [k, n] : r.counts) counts += fmt::format("{}{}: {}", counts.empty() ? "" : ", ", k, n);
        return fmt::format("AnalysisResult({} cells: {}; {}x{}, {} tiles)", r.cells.size(), counts, r.image_size.width, r.image_size.height, r.tiles);
      });

  py::class_<Pipeline, std::shared_ptr<Pipeline>>(m, "Pipeline")
      .def(py::init([](std::shared_ptr<Detector> detector, std::shared_ptr<Classifier> classifier, std::shared_ptr<Tiler> tiler,
                       std::vector<std::string> classify_labels, std::shared_ptr<Suppressor> merger, double match_threshold,
                       const std::string& metric) {
             if (!detector) throw py::value_error("Pipeline needs a detector, got None");
             if (!tiler) {
               GridTilerOptions o;
               o.tile_size = detector->tile_size();
               tiler = std::make_shared<GridTiler>(o);
             }
             PipelineOptions options;
             options.classify_labels = std::move(classify_labels);
             options.merge = SeamMergeOptions{match_threshold, parse_box_metric(metric), true};
             return std::make_shared<Pipeline>(tiler, detector, classifier, options, merger);
           }),
           py::arg("detector"), py::arg("classifier") = nullptr, py::arg("tiler") = nullptr,
           py::arg("classify_labels") = std::vector<std::string>{"WBC"}, py::arg("merger") = nullptr, py::arg("match_threshold") = 0.5,
           py::arg("metric") = "iou", py::keep_alive<1, 2>(), py::keep_alive<1, 3>(), py::keep_alive<1, 4>(), py::keep_alive<1, 6>(),
           "Default tiler: a GridTiler of the detector's tile_size(), 15 % overlap. Default merger: seam merging.")
      .def_static(
          "from_config", [](const std::string& path) { return std::make_shared<Pipeline>(make_pipeline(load_pipeline_config(path))); },
          py::arg("path"), "A pipeline of bloodcv's own components from a JSON config file (see pipeline.hpp).")
      .def(
          "analyze",
          [](const Pipeline& self, const py::object& image) {
            if (py::isinstance<py::str>(image) || py::hasattr(image, "__fspath__")) {
              const std::string path = py::str(py::module_::import("os").attr("fspath")(image));
              py::gil_scoped_release release;
              return self.analyze(path);
            }
            const py::array array = py::array::ensure(image);
            if (!array) throw py::value_error("image must be a path or a numpy array");
            const cv::Mat mat = image_of(array);
            py::gil_scoped_release release;
            return self.analyze(mat);
          },
          py::arg("image"), "Analyses an image file path or a BGR numpy image (uint8, uint16 or float32 in [0, 1]).");
}

}  // namespace bloodcv::python
