// bloodcv.eval for Python: readers, detection / classification / chain metrics, built from files or arrays.

#include "conversions.hpp"

namespace bloodcv::python {

namespace {

py::object parse_json(const std::string& text) { return py::module_::import("json").attr("loads")(text); }

// {image name: (boxes, labels[, ignore])} → ground truth.
eval::GroundTruth ground_truth_from(const std::vector<std::string>& labels, const py::dict& images) {
  eval::GroundTruth gt;
  gt.labels = labels;
  for (const auto& [name, value] : images) {
    const py::tuple t = py::cast<py::tuple>(value);
    if (t.size() < 2 || t.size() > 3) throw py::value_error("each image needs (boxes, labels[, ignore])");
    const auto boxes = py::cast<FloatArray>(t[0]);
    const auto lab = py::cast<LabelArray>(t[1]);
    const auto span = box_span(boxes, "boxes");
    validate_boxes(span, "boxes");
    if (static_cast<std::size_t>(lab.size()) != span.size()) throw py::value_error("labels and boxes differ in length");
    eval::ImageGroundTruth image{py::cast<std::string>(name), {}, {}};
    const auto ignore = t.size() > 2 ? py::cast<std::vector<bool>>(t[2]) : std::vector<bool>(span.size(), false);
    if (ignore.size() != span.size()) throw py::value_error("ignore and boxes differ in length");
    for (std::size_t i = 0; i < span.size(); ++i) image.boxes.push_back({span[i], lab.data()[i], ignore[i]});
    gt.images.push_back(std::move(image));
  }
  return gt;
}

// {image name: (boxes, scores, labels)} → predictions.
eval::Predictions predictions_from(const std::vector<std::string>& labels, const py::dict& images) {
  eval::Predictions p;
  p.labels = labels;
  for (const auto& [name, value] : images) {
    const py::tuple t = py::cast<py::tuple>(value);
    if (t.size() != 3) throw py::value_error("each image needs (boxes, scores, labels)");
    p.images.push_back({py::cast<std::string>(name),
                        detections_of(py::cast<FloatArray>(t[0]), py::cast<FloatArray>(t[1]), std::optional<LabelArray>(py::cast<LabelArray>(t[2])))});
  }
  return p;
}

std::map<std::string, std::vector<eval::TypedBox>> typed_boxes(const py::dict& images) {
  std::map<std::string, std::vector<eval::TypedBox>> out;
  for (const auto& [name, value] : images) {
    auto& cells = out[py::cast<std::string>(name)];
    for (const py::handle cell : value) {
      const py::tuple t = py::cast<py::tuple>(cell);
      const auto box = py::cast<std::vector<float>>(t[0]);
      if (box.size() != 4) throw py::value_error("a box needs 4 numbers");
      cells.push_back({{box[0], box[1], box[2], box[3]}, py::cast<std::string>(t[1]), t.size() > 2 ? py::cast<float>(t[2]) : 1.f});
    }
  }
  return out;
}

}  // namespace

void bind_eval(py::module_& root) {
  py::module_ m = root.def_submodule("eval", "Detection, classification and detect-then-classify metrics");

  py::class_<eval::GroundTruth>(m, "GroundTruth")
      .def_readonly("labels", &eval::GroundTruth::labels)
      .def_property_readonly("images", [](const eval::GroundTruth& g) {
        std::vector<std::string> names;
        for (const auto& im : g.images) names.push_back(im.image);
        return names;
      })
      .def("__len__", [](const eval::GroundTruth& g) { return g.images.size(); });
  py::class_<eval::Predictions>(m, "Predictions")
      .def_readonly("labels", &eval::Predictions::labels)
      .def("__len__", [](const eval::Predictions& p) { return p.images.size(); });

  m.def("read_voc", &eval::read_voc, py::arg("path"), py::arg("labels") = std::vector<std::string>{});
  m.def("read_yolo", &eval::read_yolo, py::arg("labels_dir"), py::arg("images_dir"), py::arg("labels") = std::vector<std::string>{});
  m.def("read_coco", &eval::read_coco, py::arg("path"));
  m.def("read_predictions", &eval::read_predictions, py::arg("path"));
  m.def("ground_truth", &ground_truth_from, py::arg("labels"), py::arg("images"),
        "Ground truth from {image name: (boxes (N, 4), labels (N,)[, ignore (N,)])}.");
  m.def("predictions", &predictions_from, py::arg("labels"), py::arg("images"),
        "Predictions from {image name: (boxes (N, 4), scores (N,), labels (N,))}.");

  py::class_<eval::DetectionReport>(m, "DetectionReport")
      .def_property_readonly("coco", [](const eval::DetectionReport& r) {
        py::dict d;
        for (const auto& [k, v] : r.coco) d[py::str(k)] = v;
        return d;
      })
      .def("to_dict", [](const eval::DetectionReport& r) { return parse_json(eval::to_json(r)); })
      .def("to_markdown", [](const eval::DetectionReport& r) { return eval::to_markdown(r); })
      .def("__repr__", [](const eval::DetectionReport& r) {
        return fmt::format("DetectionReport(AP={:.4f}, AP50={:.4f}, AP75={:.4f}, images={})", r.metric("AP"), r.metric("AP50"), r.metric("AP75"), r.images);
      });
  m.def(
      "evaluate_detections",
      [](const eval::GroundTruth& gt, const eval::Predictions& pred, std::optional<std::vector<double>> iou_thresholds,
         std::vector<int> max_detections, std::optional<float> count_score_threshold) {
        eval::DetectionEvalOptions o;
        if (iou_thresholds) o.iou_thresholds = *iou_thresholds;
        o.max_detections = std::move(max_detections);
        o.count_score_threshold = count_score_threshold;
        py::gil_scoped_release release;
        return eval::evaluate_detections(gt, pred, o);
      },
      py::arg("ground_truth"), py::arg("predictions"), py::arg("iou_thresholds") = py::none(),
      py::arg("max_detections") = std::vector<int>{1, 10, 100}, py::arg("count_score_threshold") = py::none());

  py::class_<eval::ClassificationReport>(m, "ClassificationReport")
      .def_readonly("accuracy", &eval::ClassificationReport::accuracy)
      .def_readonly("labels", &eval::ClassificationReport::labels)
      .def_readonly("confusion", &eval::ClassificationReport::confusion)
      .def("to_dict", [](const eval::ClassificationReport& r) { return parse_json(eval::to_json(r)); })
      .def("to_markdown", [](const eval::ClassificationReport& r) { return eval::to_markdown(r); })
      .def("confusion_image", [](const eval::ClassificationReport& r) { return mat_to_numpy(eval::draw_confusion(r)); },
           "The confusion matrix as a BGR image.");
  m.def("evaluate_classification", &eval::evaluate_classification, py::arg("truth"), py::arg("predicted"), py::arg("labels"));

  py::class_<eval::ChainReport>(m, "ChainReport")
      .def_readonly("cells", &eval::ChainReport::cells)
      .def_readonly("detected", &eval::ChainReport::detected)
      .def_readonly("correct", &eval::ChainReport::correct)
      .def_readonly("detection_recall", &eval::ChainReport::detection_recall)
      .def_readonly("end_to_end_accuracy", &eval::ChainReport::end_to_end_accuracy)
      .def_readonly("types", &eval::ChainReport::types);
  m.def(
      "evaluate_chain",
      [](const py::dict& truth, const py::dict& predicted, double iou_threshold) {
        return eval::evaluate_chain(typed_boxes(truth), typed_boxes(predicted), iou_threshold);
      },
      py::arg("truth"), py::arg("predicted"), py::arg("iou_threshold") = 0.5,
      "truth / predicted: {image: [(box [x1, y1, x2, y2], type[, score]), ...]}.");
}

}  // namespace bloodcv::python
