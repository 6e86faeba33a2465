// Detectors, classifiers, the pipeline and reports for Python, with trampolines so that a detector or
// classifier written in Python plugs into the C++ pipeline.
#include <filesystem>

#include "conversions.hpp"

namespace bloodcv::python {

namespace {

// One image's result of a Python detect(): (boxes, scores[, labels]) or {"boxes", "scores"[, "labels"]
// [, "predicted_ious"]}. Labels may be left out only by a detector with one label.
std::vector<Detection> detections_from_python(const py::handle& item, std::size_t index, std::size_t label_count) {
  py::object boxes, scores, labels = py::none(), ious = py::none();
  if (py::isinstance<py::dict>(item)) {
    const py::dict d = py::reinterpret_borrow<py::dict>(item);
    for (const char* key : {"boxes", "scores"})
      if (!d.contains(key)) throw py::value_error(fmt::format("detect() result {} is a dict without \"{}\"", index, key));
    boxes = d["boxes"];
    scores = d["scores"];
    if (d.contains("labels")) labels = d["labels"];
    if (d.contains("predicted_ious")) ious = d["predicted_ious"];
  } else if (py::isinstance<py::tuple>(item) || py::isinstance<py::list>(item)) {
    const py::sequence t = py::reinterpret_borrow<py::sequence>(item);
    if (t.size() < 2 || t.size() > 3)
      throw py::value_error(fmt::format("detect() result {} must be (boxes, scores[, labels]) or a dict, got {} items", index, t.size()));
    boxes = t[0];
    scores = t[1];
    if (t.size() > 2) labels = t[2];
  } else {
    throw py::type_error(fmt::format("detect() result {} must be (boxes, scores[, labels]) or a dict, got {}", index,
                                     py::str(py::type::handle_of(item).attr("__name__")).cast<std::string>()));
  }
  if (labels.is_none() && label_count > 1)
    throw py::value_error(fmt::format("detect() result {} has no labels, but the detector has {} labels", index, label_count));
  const std::string where = fmt::format("detect() result {}: ", index);
  auto dets = detections_of(to_float_array(boxes, where + "boxes"), to_float_array(scores, where + "scores"),
                            labels.is_none() ? std::nullopt : std::optional<LabelArray>(to_label_array(labels, where + "labels")));
  for (const Detection& d : dets)
    if (d.label < 0 || static_cast<std::size_t>(d.label) >= label_count)
      throw py::value_error(fmt::format("detect() result {}: label {} is outside the detector's {} labels", index, d.label, label_count));
  if (!ious.is_none()) {
    const auto values = to_float_array(ious, where + "predicted_ious");
    if (values.ndim() != 1 || static_cast<std::size_t>(values.size()) != dets.size())
      throw py::value_error(fmt::format("detect() result {}: predicted_ious has shape {} for {} boxes", index, shape_of(values), dets.size()));
    for (std::size_t i = 0; i < dets.size(); ++i) dets[i].predicted_iou = values.data()[i];
  }
  return dets;
}

cv::Size size_from_python(const py::object& value, const char* method) {
  try {
    const auto size = py::cast<std::pair<int, int>>(value);
    if (size.first <= 0 || size.second <= 0) throw py::cast_error();
    return {size.first, size.second};
  } catch (const py::cast_error&) {
    throw py::value_error(fmt::format("{}() must return (width, height), two positive integers, got {}", method, py::repr(value).cast<std::string>()));
  }
}

// Lets a Python class implement Detector: detect(images) returns, per image, (boxes, scores, labels)
// or {"boxes", "scores", "labels"[, "predicted_ious"]}; labels() a list of names; input_size() and
// optionally tile_size() (width, height).
class PyDetector : public Detector {
 public:
  std::vector<std::vector<Detection>> detect(const std::vector<cv::Mat>& images) const override {
    py::gil_scoped_acquire gil;
    const py::function override = py::get_override(static_cast<const Detector*>(this), "detect");
    if (!override) throw std::runtime_error("a Python Detector must implement detect(images)");
    const std::size_t label_count = labels().size();
    py::list batch;
    for (const cv::Mat& image : images) batch.append(mat_to_numpy(image));
    const py::object result = override(batch);
    if (!py::isinstance<py::sequence>(result) || py::isinstance<py::dict>(result))
      throw py::type_error("detect() must return a list with one result per image");
    if (py::len(result) != images.size())
      throw py::value_error(fmt::format("detect() returned {} results for {} images", py::len(result), images.size()));
    std::vector<std::vector<Detection>> out;
    std::size_t i = 0;
    for (const py::handle item : result) out.push_back(detections_from_python(item, i++, label_count));
    return out;
  }
  std::vector<std::string> labels() const override { PYBIND11_OVERRIDE_PURE(std::vector<std::string>, Detector, labels, ); }
  cv::Size input_size() const override {
    py::gil_scoped_acquire gil;
    const py::function override = py::get_override(static_cast<const Detector*>(this), "input_size");
    if (!override) throw std::runtime_error("a Python Detector must implement input_size()");
    return size_from_python(override(), "input_size");
  }
  cv::Size tile_size() const override {
    py::gil_scoped_acquire gil;
    const py::function override = py::get_override(static_cast<const Detector*>(this), "tile_size");
    return override ? size_from_python(override(), "tile_size") : Detector::tile_size();
  }
  std::optional<double> microns_per_pixel() const override {
    py::gil_scoped_acquire gil;
    const py::function override = py::get_override(static_cast<const Detector*>(this), "microns_per_pixel");
    return override ? py::cast<std::optional<double>>(override()) : Detector::microns_per_pixel();
  }
};

// Lets a Python class implement Classifier: classify(image, boxes) returns per box the probabilities of
// each of labels() ([N, K] array, rows summing to 1) or a dict with "probabilities"; labels() a list of
// names.
class PyClassifier : public Classifier {
 public:
  std::vector<Classification> classify(const cv::Mat& image, const std::vector<Box>& boxes) const override {
    py::gil_scoped_acquire gil;
    const py::function override = py::get_override(static_cast<const Classifier*>(this), "classify");
    if (!override) throw std::runtime_error("a Python Classifier must implement classify(image, boxes)");
    const std::size_t k = labels().size();
    std::vector<Box> copy = boxes;
    py::object result = override(mat_to_numpy(image), boxes_to_numpy(std::move(copy)));
    if (py::isinstance<py::dict>(result)) {
      const py::dict d = py::reinterpret_borrow<py::dict>(result);
      if (!d.contains("probabilities")) throw py::value_error("classify() returned a dict without \"probabilities\"");
      result = d["probabilities"];
    }
    const auto probs = to_float_array(result, "classify(): probabilities");
    if (probs.ndim() != 2 || static_cast<std::size_t>(probs.shape(0)) != boxes.size() || static_cast<std::size_t>(probs.shape(1)) != k)
      throw py::value_error(fmt::format("classify() must return probabilities of shape ({}, {}) (boxes, labels), got {}", boxes.size(), k,
                                        shape_of(probs)));
    std::vector<Classification> out(boxes.size());
    for (std::size_t i = 0; i < out.size(); ++i) {
      const float* p = probs.data() + i * k;
      double sum = 0;
      for (std::size_t j = 0; j < k; ++j) {
        if (!(p[j] >= 0.f && p[j] <= 1.f))
          throw py::value_error(fmt::format("classify(): probabilities[{}, {}] = {} is not in [0, 1] (return softmax outputs, not logits)", i, j, p[j]));
        sum += p[j];
      }
      if (std::abs(sum - 1.0) > 1e-3)
        throw py::value_error(fmt::format("classify(): probabilities of box {} sum to {}, not 1", i, sum));
      out[i].probabilities.assign(p, p + k);
      out[i].label = std::max_element(p, p + k) - p;
      out[i].score = p[out[i].label];
    }
    return out;
  }
  std::vector<std::string> labels() const override { PYBIND11_OVERRIDE_PURE(std::vector<std::string>, Classifier, labels, ); }
  float uncertainty_threshold() const override { PYBIND11_OVERRIDE(float, Classifier, uncertainty_threshold, ); }
};

// detect() takes a list of images: one bare array would be iterated row by row.
std::vector<cv::Mat> images_of(const py::object& images) {
  if (py::isinstance<py::array>(images) || py::hasattr(images, "__array_interface__"))
    throw py::value_error(fmt::format("images must be a list of images, got one array of shape {}: pass [image]",
                                      py::str(images.attr("shape")).cast<std::string>()));
  if (!py::isinstance<py::sequence>(images) || py::isinstance<py::str>(images))
    throw py::type_error("images must be a list of numpy images");
  std::vector<cv::Mat> mats;
  for (const py::handle im : images) {
    const py::array array = py::array::ensure(im);
    if (!array) throw py::type_error("each image must be a numpy array");
    mats.push_back(mat_view(array));
  }
  return mats;
}

RuntimeOptions runtime_options(const std::string& device, const std::string& precision, int batch_size, int threads, bool optimize) {
  return RuntimeOptions{device, precision, batch_size, threads, optimize};
}

// Per-cell columns of a result as numpy arrays; unclassified cells have type -1 and score NaN.
py::dict result_arrays(const AnalysisResult& r) {
  const std::size_t n = r.cells.size(), k = r.classifier_labels.size();
  std::vector<Box> boxes(n);
  std::vector<float> scores(n), type_scores(n, std::numeric_limits<float>::quiet_NaN());
  std::vector<std::int64_t> labels(n), types(n, -1);
  std::vector<std::uint8_t> uncertain(n, 0);
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
      uncertain[i] = c.uncertain;
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
  out["uncertain"] = to_numpy(std::move(uncertain)).attr("astype")("bool");
  return out;
}

}  // namespace

void bind_runtime(py::module_& m) {
  m.def(
      "read_image", [](const std::string& path) { return mat_to_numpy(read_image(path)); }, py::arg("path"),
      "Reads an image file as an 8-bit BGR numpy array of shape (H, W, 3), converting gray, BGRA and 16-bit images.\n\n"
      "Raises RuntimeError naming the path when the file is missing, empty, damaged (e.g. a JPEG cut short) or not an image.");
  m.def("default_model_dir", &default_model_dir,
        "Where the default models are: $BLOODCV_MODELS if set, else the models/ folder bloodcv was built from.");
  m.def(
      "differential_of",
      [](const std::map<std::string, int>& type_counts) {
        const Differential d = differential_of(type_counts);
        py::dict out;
        out["percent"] = d.percent;
        out["cells"] = d.cells;
        out["uncertain"] = d.uncertain;
        out["note"] = d.note;
        return out;
      },
      py::arg("type_counts"),
      "The differential of {cell type: count} as the pipeline computes it: {\"percent\": {type: percent of the typed cells}, "
      "\"cells\": its denominator, \"uncertain\": the cells typed \"uncertain\", left out, \"note\": why it is empty or "
      "partial}. Every type but \"uncertain\" gets a percentage; none when no cell counts.");

  py::class_<Detector, PyDetector, std::shared_ptr<Detector>>(
      m, "Detector",
      "Base class of detectors: finds cells in a batch of images.\n\n"
      "Subclass it in Python to plug your own model into Pipeline: implement detect(images), labels() and input_size(); "
      "tile_size() is optional (default: input_size()). detect() returns, per image, a dict {\"boxes\": (N, 4) [x1, y1, x2, y2] "
      "in that image's pixels, \"scores\": (N,) in [0, 1], \"labels\": (N,) indices into labels()[, \"predicted_ious\": (N,)]} "
      "or a tuple (boxes, scores[, labels]); numpy arrays or torch tensors. Labels may be left out only with one label.")
      .def(py::init<>(), "A detector to subclass: call super().__init__() from the subclass's __init__.")
      .def(
          "detect",
          [](const Detector& self, const py::object& images) {
            const std::vector<cv::Mat> mats = images_of(images);
            std::vector<std::vector<Detection>> results;
            {
              py::gil_scoped_release release;
              results = self.detect(mats);
            }
            py::list out;
            for (const auto& r : results) out.append(detections_to_dict(r));
            return out;
          },
          py::arg("images"),
          "Finds the cells in each image of a list (BGR numpy arrays, uint8 / uint16 / float32 in [0, 1], any sizes).\n\n"
          "Returns a list with one dict per image: \"boxes\" (N, 4) float32 [x1, y1, x2, y2] in that image's pixels, \"scores\" (N,), "
          "\"labels\" (N,) int64 indices into labels(), and \"predicted_ious\" (N,) when the model predicts them.")
      .def("labels", &Detector::labels, "The names of the labels that detections carry, by label index.")
      .def(
          "input_size",
          [](const Detector& self) {
            const cv::Size s = self.input_size();
            return py::make_tuple(s.width, s.height);
          },
          "The size (width, height) in pixels of the images the model takes.")
      .def(
          "tile_size",
          [](const Detector& self) {
            const cv::Size s = self.tile_size();
            return py::make_tuple(s.width, s.height);
          },
          "The image area (width, height) in pixels that one input should cover: the scale the model was trained at, "
          "and the default tile size of a Pipeline. By default input_size().")
      .def("microns_per_pixel", &Detector::microns_per_pixel,
           "Microns per pixel of the training images where known (a model file's \"microns_per_pixel\"), else None: a slide is "
           "then read at that scale.");

  py::class_<TorchScriptDetector, Detector, std::shared_ptr<TorchScriptDetector>>(
      m, "TorchScriptDetector",
      "A bloodcv detection model file (TorchScript with its description, docs/model_format.md) run through LibTorch: "
      "letterboxing, batching, decoding (YOLOv5 or anchor/RetinaNet outputs) and NMS as the file says. "
      "detect() may be called from several threads at once.")
      .def(py::init([](const std::string& path, const std::string& device, const std::string& precision, int batch_size, std::optional<float> score_threshold,
                       std::optional<double> nms_iou_threshold, int threads, bool optimize) {
             return std::make_shared<TorchScriptDetector>(
                 path, TorchScriptDetectorOptions{runtime_options(device, precision, batch_size, threads, optimize), score_threshold, nms_iou_threshold});
           }),
           py::arg("path"), py::arg("device") = "cpu", py::arg("precision") = RuntimeOptions{}.precision, py::arg("batch_size") = RuntimeOptions{}.batch_size,
           py::arg("score_threshold") = py::none(), py::arg("nms_iou_threshold") = py::none(), py::arg("threads") = RuntimeOptions{}.threads,
           py::arg("optimize") = RuntimeOptions{}.optimize, py::call_guard<py::gil_scoped_release>(),
           "Loads the model file at path.\n\n"
           "device: \"cpu\", \"cuda\" or \"cuda:N\"; precision: \"float32\", \"bfloat16\" (fast on CPUs with AVX512-BF16/AMX) or \"float16\" (CUDA only); batch_size: images per forward pass; "
           "score_threshold, nms_iou_threshold: in [0, 1], override the file's (None keeps them; nms_iou_threshold also replaces the "
           "file's per-label thresholds); threads: LibTorch's intra-op "
           "threads, process-wide (0 leaves them); optimize: freeze and optimise the module on the CPU, kept only if its outputs equal "
           "the original's to 1e-4. Raises ValueError for a bad argument, RuntimeError naming the file when it cannot be used.")
      .def_property_readonly("metadata_json", &TorchScriptDetector::metadata_json, "The model file's description (bloodcv.json) as text.")
      .def("optimized", &TorchScriptDetector::optimized, "True when the frozen, optimised module is the one that runs.");

  py::class_<Classifier, PyClassifier, std::shared_ptr<Classifier>>(
      m, "Classifier",
      "Base class of classifiers: the cell in each box → a type with probabilities.\n\n"
      "Subclass it in Python to plug your own model into Pipeline: implement classify(image, boxes), returning "
      "probabilities of shape (N, len(labels())) with rows summing to 1 (or a dict with \"probabilities\"), and labels().")
      .def(py::init<>(), "A classifier to subclass: call super().__init__() from the subclass's __init__.")
      .def(
          "classify",
          [](const Classifier& self, const py::array& image, const py::object& boxes) {
            const cv::Mat mat = mat_view(image);
            const FloatArray box_array = to_float_array(boxes, "boxes");
            const auto span = box_span(box_array, "boxes");
            const std::vector<Box> list(span.begin(), span.end());
            std::vector<Classification> results;
            {
              py::gil_scoped_release release;
              results = self.classify(mat, list);
            }
            const std::size_t k = self.labels().size();
            std::vector<std::int64_t> labels;
            std::vector<float> scores;
            py::array_t<float> probabilities({static_cast<py::ssize_t>(results.size()), static_cast<py::ssize_t>(k)});
            for (std::size_t i = 0; i < results.size(); ++i) {
              if (results[i].probabilities.size() != k)
                throw py::value_error(fmt::format("the classifier gave {} probabilities for {} labels", results[i].probabilities.size(), k));
              labels.push_back(results[i].label);
              scores.push_back(results[i].score);
              std::copy_n(results[i].probabilities.begin(), k, probabilities.mutable_data() + i * k);
            }
            py::dict out;
            out["labels"] = like(to_numpy(std::move(labels)), boxes);
            out["scores"] = like(to_numpy(std::move(scores)), boxes);
            out["probabilities"] = like(probabilities, boxes);
            return out;
          },
          py::arg("image"), py::arg("boxes"),
          "Classifies the cell in each box of an image.\n\n"
          "image: BGR numpy array (uint8, uint16 or float32 in [0, 1]); boxes: (N, 4) [x1, y1, x2, y2] in image pixels, "
          "numpy or torch. Returns a dict of \"labels\" (N,) int64 indices into labels(), \"scores\" (N,) the top "
          "probability, and \"probabilities\" (N, K), as the kind of array boxes was (a torch tensor on its device, or numpy).")
      .def("labels", &Classifier::labels, "The names of the cell types, by label index.")
      .def("uncertainty_threshold", &Classifier::uncertainty_threshold,
           "The top probability below which an answer is not to be trusted: Pipeline types such a cell 'uncertain'. "
           "Default 0 (every answer counts); a Python classifier may override it.");

  py::class_<TorchScriptClassifier, Classifier, std::shared_ptr<TorchScriptClassifier>>(
      m, "TorchScriptClassifier",
      "A bloodcv classification model file run through LibTorch: each box is cropped (clipped to the image) with context "
      "padding, resized and normalised as the file says, and the softmax of the logits gives the probabilities. "
      "A box with no area inside the image raises ValueError. classify() may be called from several threads at once.")
      .def(py::init([](const std::string& path, const std::string& device, const std::string& precision, int batch_size, std::optional<float> crop_padding,
                       int threads, bool optimize) {
             return std::make_shared<TorchScriptClassifier>(
                 path, TorchScriptClassifierOptions{runtime_options(device, precision, batch_size, threads, optimize), crop_padding});
           }),
           py::arg("path"), py::arg("device") = "cpu", py::arg("precision") = RuntimeOptions{}.precision, py::arg("batch_size") = RuntimeOptions{}.batch_size, py::arg("crop_padding") = py::none(),
           py::arg("threads") = RuntimeOptions{}.threads, py::arg("optimize") = RuntimeOptions{}.optimize, py::call_guard<py::gil_scoped_release>(),
           "Loads the model file at path.\n\n"
           "device: \"cpu\", \"cuda\" or \"cuda:N\"; precision: \"float32\", \"bfloat16\" (fast on CPUs with AVX512-BF16/AMX) or \"float16\" (CUDA only); batch_size: crops per forward pass; "
           "crop_padding: context around each box, a fraction of its size per side in [0, 2] (None: the file's); threads, optimize: "
           "as TorchScriptDetector's.")
      .def("optimized", &TorchScriptClassifier::optimized, "True when the frozen, optimised module is the one that runs.")
      .def(
          "input_size", [](const TorchScriptClassifier& self) { return py::make_tuple(self.input_size().width, self.input_size().height); },
          "The size (width, height) in pixels each crop is resized to.")
      .def_property_readonly("metadata_json", &TorchScriptClassifier::metadata_json, "The model file's description (bloodcv.json) as text.")
      .def_property_readonly("temperature", &TorchScriptClassifier::temperature,
                             "The calibration temperature the logits are divided by before the softmax (the file's, else 1).");

  py::class_<AnalysisResult>(m, "AnalysisResult",
                             "One image's analysis: its cells (by decreasing detector score), counts per detector label, counts per "
                             "cell type, the differential and stage timings. Returned by Pipeline.analyze.")
      .def_property_readonly(
          "image_size", [](const AnalysisResult& r) { return py::make_tuple(r.image_size.width, r.image_size.height); },
          "(width, height) of the analysed image in pixels.")
      .def_readonly("tiles", &AnalysisResult::tiles, "How many tiles the image was cut into (for a source: planned, skipped ones included).")
      .def_property_readonly(
          "slide",
          [](const AnalysisResult& r) -> py::object { return r.slide ? py::object(slide_info_dict(*r.slide)) : py::none(); },
          "For a source: {source, levels, microns_per_pixel, downsample (level-0 pixels per detector pixel), level, tiles_skipped}; "
          "None for an image.")
      .def_readonly("detector_labels", &AnalysisResult::detector_labels, "The detector's label names, by label index.")
      .def_readonly("classifier_labels", &AnalysisResult::classifier_labels, "The classifier's type names, by index (empty without a classifier).")
      .def_readonly("counts", &AnalysisResult::counts, "{detector label: number of cells}, every label listed.")
      .def_readonly("type_counts", &AnalysisResult::type_counts, "{cell type: number of classified cells}, every type listed.")
      .def_readonly("differential", &AnalysisResult::differential,
                    "{cell type: percent of differential_cells}; empty when no cell was typed with confidence.")
      .def_readonly("differential_cells", &AnalysisResult::differential_cells,
                    "The differential's denominator: typed cells, the uncertain ones left out.")
      .def_readonly("differential_note", &AnalysisResult::differential_note,
                    "Why the differential is empty or partial (e.g. uncertain cells left out); empty otherwise.")
      .def_property_readonly("timings_ms",
                             [](const AnalysisResult& r) {
                               const StageTimings& t = r.timings;
                               return py::dict(py::arg("stain") = t.stain_ms, py::arg("tiling") = t.tiling_ms, py::arg("detection") = t.detection_ms,
                                               py::arg("merging") = t.merging_ms, py::arg("classification") = t.classification_ms,
                                               py::arg("total") = t.total_ms);
                             },
                             "Milliseconds spent in each stage: stain, tiling, detection, merging, classification, and the total.")
      .def("arrays", &result_arrays,
           "Per-cell numpy arrays: boxes, scores, labels, types (the most probable type's index; -1: not classified), "
           "type_scores, type_probabilities, uncertain (typed, but below the classifier's threshold).")
      .def("__len__", [](const AnalysisResult& r) { return r.cells.size(); }, "The number of cells.")
      .def(
          "to_json", [](const AnalysisResult& r, const std::string& image_path) { return to_json(r, image_path); }, py::arg("image_path") = "",
          "The report as JSON text (schema bloodcv.analysis v1, see report.hpp); image_path is recorded in it.")
      .def("to_csv", &to_csv, "One CSV row per cell: id,x1,y1,x2,y2,label,score,type,type_score.")
      .def("to_coco", &to_coco_results, py::arg("image_id"),
           "COCO detection results as JSON text: [{image_id, category_id (label index + 1), bbox [x, y, w, h], score}].")
      .def(
          "overlay", [](const AnalysisResult& r, const py::array& image) { return mat_to_numpy(draw_overlay(mat_view(image), r)); }, py::arg("image"),
          "The analysed image (BGR numpy, the same size) with every cell boxed and labelled; returns a new BGR array.")
      .def(
          "write",
          [](const AnalysisResult& r, const py::array& image, const std::string& out_dir, const std::string& stem, std::int64_t image_id) {
            const ReportPaths p = write_reports(mat_view(image), r, out_dir, stem, image_id);
            return py::dict(py::arg("overlay") = p.overlay, py::arg("json") = p.json, py::arg("csv") = p.csv, py::arg("coco") = p.coco);
          },
          py::arg("image"), py::arg("out_dir"), py::arg("stem"), py::arg("image_id") = 1,
          "Writes STEM.overlay.jpg, STEM.json, STEM.csv, STEM.coco.json to out_dir; returns their paths.")
      .def("__repr__", [](const AnalysisResult& r) {
        std::string counts;
        for (const auto& [k, n] : r.counts) counts += fmt::format("{}{}: {}", counts.empty() ? "" : ", ", k, n);
        return fmt::format("AnalysisResult({} cells: {}; {}x{}, {} tiles)", r.cells.size(), counts, r.image_size.width, r.image_size.height, r.tiles);
      });

  py::class_<Pipeline, std::shared_ptr<Pipeline>>(
      m, "Pipeline",
      "The analysis of one smear image: tiles → batched detection → merging across seams → classification of the chosen "
      "cells → counts and the differential. Every stage is a component passed in. analyze() keeps no state between calls, "
      "so one pipeline may serve several threads (components written in Python run under the GIL).")
      .def(py::init([](std::shared_ptr<Detector> detector, std::shared_ptr<Classifier> classifier, std::shared_ptr<Tiler> tiler,
                       std::vector<std::string> classify_labels, const py::object& merger, double match_threshold,
                       const std::string& metric, std::shared_ptr<StainNormalizer> stain_normalizer, bool stain_before_detection,
                       std::optional<float> uncertain_below, bool class_aware) {
             if (!detector) throw py::value_error("Pipeline needs a detector, got None");
             if (!tiler) {
               GridTilerOptions o;
               o.tile_size = detector->tile_size();
               tiler = std::make_shared<GridTiler>(o);
             }
             PipelineOptions options;
             options.classify_labels = std::move(classify_labels);
             options.merger = merger_of(merger, SeamMergeOptions{match_threshold, parse_box_metric(metric), class_aware});
             options.stain_normalizer = stain_normalizer;
             options.stain_before_detection = stain_before_detection;
             options.uncertain_below = uncertain_below;
             return std::make_shared<Pipeline>(tiler, detector, classifier, options);
           }),
           py::arg("detector"), py::arg("classifier") = nullptr, py::arg("tiler") = nullptr,
           py::arg("classify_labels") = std::vector<std::string>{"WBC"}, py::arg("merger") = nullptr, py::arg("match_threshold") = 0.5,
           py::arg("metric") = "iou", py::arg("stain_normalizer") = nullptr, py::arg("stain_before_detection") = false,
           py::arg("uncertain_below") = py::none(), py::arg("class_aware") = true,
           py::keep_alive<1, 2>(), py::keep_alive<1, 3>(), py::keep_alive<1, 4>(), py::keep_alive<1, 6>(), py::keep_alive<1, 9>(),
           "detector: a Detector; classifier: a Classifier or None (detection and counts only); tiler: a Tiler, default a "
           "GridTiler of detector.tile_size() with 15 % overlap; classify_labels: the detector labels whose cells are classified "
           "(each must be one of detector.labels()); merger: a TileMerger (SeamMerger, PooledMerger, make_merger(name)) or a "
           "Suppressor to pool all tiles' detections into, default None: SeamMerger(match_threshold, metric) — detections "
           "of different tiles match where metric ('iou', 'ios', 'giou', 'diou') of their parts in the shared region exceeds "
           "match_threshold (in [0, 1]), only within a label when class_aware; stain_normalizer: a StainNormalizer applied "
           "before the classifier (and before the detector too with stain_before_detection), default None; uncertain_below: "
           "cells whose top type probability is below it are typed 'uncertain' (None: the classifier's uncertainty_threshold()).")
      .def_static(
          "from_config", [](const std::string& path) { return std::make_shared<Pipeline>(make_pipeline(load_pipeline_config(path))); },
          py::arg("path"),
          "A pipeline of bloodcv's own components from a JSON config file: {\"detector\", \"classifier\" (null: none), \"tile\": [w, h], "
          "\"overlap\", \"whole_image\", \"classify_labels\", \"device\", \"precision\", \"batch_size\", \"threads\", \"optimize\", \"score_threshold\", \"merge\": "
          "{\"match_threshold\", \"metric\", \"class_aware\"}}. Every key is optional (absent model keys mean the bundled models); "
          "an unknown key is an error; model paths are relative to the file.")
      .def(
          "analyze",
          [](const Pipeline& self, const py::object& image) {
            if (image.is_none() || !(py::isinstance<ImageSource>(image) || py::isinstance<py::str>(image) || py::hasattr(image, "__fspath__") ||
                                     py::hasattr(image, "__array_interface__") || py::hasattr(image, "__array__")))
              throw py::type_error(fmt::format("image must be a path, a numpy array or an ImageSource, got {}",
                                               py::str(py::type::handle_of(image).attr("__name__")).cast<std::string>()));
            if (py::isinstance<ImageSource>(image)) {
              const ImageSource& source = image.cast<const ImageSource&>();
              py::gil_scoped_release release;
              return self.analyze(source);
            }
            if (py::isinstance<py::str>(image) || py::hasattr(image, "__fspath__")) {
              const std::string path = py::str(py::module_::import("os").attr("fspath")(image));
              py::gil_scoped_release release;
              return self.analyze(path);
            }
            const py::array array = py::array::ensure(image);
            if (!array) throw py::value_error("image must be a path or a numpy array");
            const cv::Mat mat = mat_view(array);
            py::gil_scoped_release release;
            return self.analyze(mat);
          },
          py::arg("image"),
          "Analyses one image: a file path, a BGR numpy image (uint8, uint16, or float32 in [0, 1]) of shape (H, W[, C]), or an "
          "ImageSource (read tile by tile, background skipped: analyze_source with its defaults). Returns an AnalysisResult.");
  auto pipeline_class = py::reinterpret_borrow<py::class_<Pipeline, std::shared_ptr<Pipeline>>>(m.attr("Pipeline"));
  bind_slide_analysis(pipeline_class);
}

}  // namespace bloodcv::python
