// bloodcv.eval for Python: readers, detection / classification / chain metrics, built from files or arrays.

#include "conversions.hpp"

namespace bloodcv::python {

namespace {

py::object parse_json(const std::string& text) { return py::module_::import("json").attr("loads")(text); }

// Runs convert(value) for images[name]; a value of the wrong type (pybind's "Unable to cast", Python's "not
// iterable", numpy's "could not convert") becomes a TypeError that names the image and says what was expected.
template <class Convert>
void per_image(const py::handle& name, const py::handle& value, const char* expected, Convert&& convert) {
  const auto wrong_type = [&] {
    return py::type_error(fmt::format("images[{}] must be {}, got {}", py::repr(name).cast<std::string>(), expected,
                                      py::repr(value).cast<std::string>().substr(0, 80)));
  };
  try {
    convert();
  } catch (const py::cast_error&) {
    throw wrong_type();
  } catch (py::error_already_set& e) {
    if (!e.matches(PyExc_TypeError) && !e.matches(PyExc_ValueError)) throw;
    throw wrong_type();
  }
}

// {image name: (boxes, labels[, ignore])} → ground truth.
eval::GroundTruth ground_truth_from(const std::vector<std::string>& labels, const py::dict& images) {
  eval::GroundTruth gt;
  gt.labels = labels;
  for (const auto& [name, value] : images) per_image(name, value, "(boxes (N, 4), labels (N,)[, ignore (N,)])", [&, name = name, value = value] {
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
  });
  return gt;
}

// {image name: (boxes, scores, labels)} → predictions.
eval::Predictions predictions_from(const std::vector<std::string>& labels, const py::dict& images) {
  eval::Predictions p;
  p.labels = labels;
  for (const auto& [name, value] : images) per_image(name, value, "(boxes (N, 4), scores (N,), labels (N,))", [&, name = name, value = value] {
    const py::tuple t = py::cast<py::tuple>(value);
    if (t.size() != 3) throw py::value_error("each image needs (boxes, scores, labels)");
    p.images.push_back({py::cast<std::string>(name),
                        detections_of(py::cast<FloatArray>(t[0]), py::cast<FloatArray>(t[1]), std::optional<LabelArray>(py::cast<LabelArray>(t[2])))});
  });
  return p;
}

// A list of image names, or the path (str or os.PathLike) of a file of image ids.
std::vector<std::string> image_names(const py::object& images) {
  if (py::isinstance<py::str>(images) || py::hasattr(images, "__fspath__"))
    return eval::read_image_ids(py::cast<std::string>(py::module_::import("os").attr("fspath")(images)));
  return py::cast<std::vector<std::string>>(images);
}

std::map<std::string, std::vector<eval::TypedBox>> typed_boxes(const py::dict& images) {
  std::map<std::string, std::vector<eval::TypedBox>> out;
  for (const auto& [name, value] : images) per_image(name, value, "a list of (box [x1, y1, x2, y2], type name[, score])", [&, name = name, value = value] {
    auto& cells = out[py::cast<std::string>(name)];
    for (const py::handle cell : value) {
      const py::tuple t = py::cast<py::tuple>(cell);
      if (t.size() < 2 || t.size() > 3) throw py::value_error("each cell needs (box, type[, score])");
      const auto box = py::cast<std::vector<float>>(t[0]);
      if (box.size() != 4) throw py::value_error("a box needs 4 numbers");
      cells.push_back({{box[0], box[1], box[2], box[3]}, py::cast<std::string>(t[1]), t.size() > 2 ? py::cast<float>(t[2]) : 1.f});
    }
  });
  return out;
}

}  // namespace

void bind_eval(py::module_& root) {
  py::module_ m = root.def_submodule("eval", "Detection, classification and detect-then-classify metrics");

  py::class_<eval::GroundTruth>(
      m, "GroundTruth",
      "Annotated images for evaluate_detections: label names and, per image, boxes [x1, y1, x2, y2] in pixels, each with a "
      "label index and an ignore flag (COCO iscrowd, VOC difficult: may be matched, never counted as missed). Made by "
      "read_voc, read_yolo, read_coco or ground_truth; select_images keeps some of its images. len() is the number of images.")
      .def_readonly("labels", &eval::GroundTruth::labels, "Label names (list of str); a box's label is an index into them.")
      .def_property_readonly(
          "images",
          [](const eval::GroundTruth& g) {
            std::vector<std::string> names;
            for (const auto& im : g.images) names.push_back(im.image);
            return names;
          },
          "Image names (file names without extension), as a list of str in reading order: predictions find their image by "
          "this name.")
      .def(
          "boxes",
          [](const eval::GroundTruth& g, const std::string& image) {
            const auto it = std::find_if(g.images.begin(), g.images.end(), [&](const auto& im) { return im.image == image; });
            if (it == g.images.end()) throw py::key_error(fmt::format("no image '{}' in the ground truth", image));
            std::vector<Box> boxes;
            std::vector<std::int64_t> labels;
            std::vector<std::uint8_t> ignore;
            for (const auto& b : it->boxes) {
              boxes.push_back(b.box);
              labels.push_back(b.label);
              ignore.push_back(b.ignore);
            }
            py::dict out;
            out["boxes"] = boxes_to_numpy(std::move(boxes));
            out["labels"] = to_numpy(std::move(labels));
            out["ignore"] = to_numpy(std::move(ignore)).attr("astype")("bool");
            out["size"] = py::make_tuple(it->size.width, it->size.height);
            return out;
          },
          py::arg("image"),
          "One image's annotations: a dict of \"boxes\" (N, 4) float32 [x1, y1, x2, y2] in pixels, \"labels\" (N,) int64 "
          "indices into labels, \"ignore\" (N,) bool, and \"size\" (width, height). KeyError for an unknown image.")
      .def("__len__", [](const eval::GroundTruth& g) { return g.images.size(); });
  py::class_<eval::Predictions>(
      m, "Predictions",
      "Detections per image for evaluate_detections: label names and, per image name, boxes [x1, y1, x2, y2] in pixels with "
      "scores and label indices. Made by read_predictions or predictions. len() is the number of images.")
      .def_readonly("labels", &eval::Predictions::labels,
                    "Label names (list of str); a detection's label is an index into them. evaluate_detections matches them "
                    "to the ground truth's labels by name.")
      .def("__len__", [](const eval::Predictions& p) { return p.images.size(); });

  m.def("read_voc", &eval::read_voc, py::arg("path"), py::arg("labels") = std::vector<std::string>{},
        "Reads Pascal VOC XML ground truth. path: one .xml file, or a directory whose .xml files are read. An image is named "
        "by its <filename> (else the XML file's name) without extension; boxes come from <bndbox> in pixels; <difficult>1 "
        "marks a box as ignored. labels: the label names in order, any other name being an error; empty (default): names in "
        "order of first appearance. Returns a GroundTruth. Raises RuntimeError on a missing or malformed file.");
  m.def("read_yolo", &eval::read_yolo, py::arg("labels_dir"), py::arg("images_dir"), py::arg("labels") = std::vector<std::string>{},
        "Reads YOLO txt ground truth. labels_dir: one .txt per image, lines 'class cx cy w h' normalised to [0, 1]. "
        "images_dir: the images, whose sizes (read from the image of the same stem, any extension) turn the boxes into "
        "pixels. labels: the class names by index; empty (default): read from classes.txt in labels_dir or its parent. "
        "Returns a GroundTruth. Raises RuntimeError on a missing image, a malformed line or a class out of range.");
  m.def("read_coco", &eval::read_coco, py::arg("path"),
        "Reads COCO instances JSON ground truth (images, annotations with bbox [x, y, w, h] in pixels and iscrowd, "
        "categories). Images are named by file_name without extension; labels are the category names in file order; "
        "iscrowd boxes are ignored ones. Returns a GroundTruth. Raises RuntimeError on a missing or malformed file.");
  m.def("read_predictions", &eval::read_predictions, py::arg("path"),
        "Reads predictions in any form bloodcv analyze writes them. path: its output directory (the analysis reports in "
        "it, or coco_results.json if it holds none), one analysis report JSON, or COCO results JSON with bloodcv's "
        "coco_images.json beside it (image ids to file names, category ids to names). Images are named by file name "
        "without extension; boxes are [x1, y1, x2, y2] in pixels. Returns a Predictions. Raises RuntimeError on a missing "
        "or unrecognised file.");
  m.def("read_image_ids", &eval::read_image_ids, py::arg("path"),
        "Reads image ids from a text file, one per line (as a VOC ImageSets file); an extension is dropped ('a.jpg' gives "
        "'a'). Returns a list of str, for select_images or evaluate_detections(images=...). Raises RuntimeError if the file "
        "is missing or holds no ids.");
  m.def("select_images", &eval::select_images, py::arg("truth"), py::arg("names"),
        "The ground truth of the named images only. truth: a GroundTruth (left unchanged). names: image names as "
        "GroundTruth.images lists them (without extension); a repeated name counts once. Returns a new GroundTruth with "
        "those images in the order of names. Raises ValueError naming the images that truth lacks.");
  m.def("ground_truth", &ground_truth_from, py::arg("labels"), py::arg("images"),
        "Ground truth from arrays. labels: the label names (list of str). images: {image name: (boxes, labels[, ignore])} "
        "with boxes float (N, 4) [x1, y1, x2, y2] in pixels, labels int (N,) indices into labels, and ignore bool (N,) "
        "(default all False; an ignored box may be matched but is never counted as missed). Returns a GroundTruth. Raises "
        "ValueError on mismatched lengths or invalid boxes.");
  m.def("predictions", &predictions_from, py::arg("labels"), py::arg("images"),
        "Predictions from arrays. labels: the label names (list of str), matched to the ground truth's by name. images: "
        "{image name: (boxes, scores, labels)} with boxes float (N, 4) [x1, y1, x2, y2] in pixels, scores float (N,) "
        "(confidences, higher is surer) and labels int (N,) indices into labels. Returns a Predictions. Raises ValueError on "
        "mismatched lengths, invalid boxes or NaN scores.");

  py::class_<eval::DetectionReport>(
      m, "DetectionReport",
      "The result of evaluate_detections: the COCO summary (coco), how many images and detections were scored, and in "
      "to_dict() the precision / recall / F1 table by IoU threshold and the per-class metrics and counting error.")
      .def_property_readonly(
          "coco",
          [](const eval::DetectionReport& r) {
            py::dict d;
            for (const auto& [k, v] : r.coco) d[py::str(k)] = v;
            return d;
          },
          "The COCO summary as {name: value}, in the order COCOeval.summarize() prints it: AP, AP50, AP75, AP_small, "
          "AP_medium, AP_large (at the largest max_detections), AR1, AR10, AR100 (one per max_detections), AR_small, "
          "AR_medium, AR_large. Values in [0, 1]; -1 where undefined (no ground truth, or AP50 / AP75 without that IoU "
          "threshold).")
      .def_readonly("images", &eval::DetectionReport::images, "The number of ground-truth images scored.")
      .def_readonly("predictions", &eval::DetectionReport::predictions, "The number of detections on the scored images.")
      .def_readonly("images_without_predictions", &eval::DetectionReport::images_without_predictions,
                    "The number of scored images that the predictions do not cover: all their cells count as missed "
                    "(0 with predicted_images_only=True).")
      .def_readonly("unmatched_prediction_images", &eval::DetectionReport::unmatched_prediction_images,
                    "Names of the predicted images that are not in the ground truth (list of str); they were ignored.")
      .def(
          "to_dict", [](const eval::DetectionReport& r) { return parse_json(eval::to_json(r)); },
          "The whole report as a dict, as bloodcv eval writes eval.json: images, predictions, images_without_predictions, "
          "unmatched_prediction_images, coco, by_iou (iou, precision, recall, f1, confidence and ap at each IoU threshold, "
          "all classes ranked together, at the F1-best confidence), classes (per class: label, ground_truth count, ap, ap50, "
          "ap75, by_iou, count_mae, count_threshold), count_mae (mean over classes of the mean per-image absolute count "
          "error) and options.")
      .def(
          "to_markdown", [](const eval::DetectionReport& r) { return eval::to_markdown(r); },
          "The report as Markdown text with tables, as bloodcv eval writes eval.md.")
      .def("__repr__", [](const eval::DetectionReport& r) {
        return fmt::format("DetectionReport(AP={:.4f}, AP50={:.4f}, AP75={:.4f}, images={})", r.metric("AP"), r.metric("AP50"), r.metric("AP75"), r.images);
      });
  m.def(
      "evaluate_detections",
      [](const eval::GroundTruth& gt, const eval::Predictions& pred, std::optional<std::vector<double>> iou_thresholds,
         std::vector<int> max_detections, std::optional<float> count_score_threshold, const py::object& images,
         bool predicted_images_only) {
        eval::DetectionEvalOptions o;
        if (iou_thresholds) o.iou_thresholds = *iou_thresholds;
        o.max_detections = std::move(max_detections);
        o.count_score_threshold = count_score_threshold;
        o.predicted_images_only = predicted_images_only;
        std::optional<eval::GroundTruth> selected;
        if (!images.is_none()) selected = eval::select_images(gt, image_names(images));
        py::gil_scoped_release release;
        return eval::evaluate_detections(selected ? *selected : gt, pred, o);
      },
      py::arg("ground_truth"), py::arg("predictions"), py::arg("iou_thresholds") = py::none(),
      py::arg("max_detections") = std::vector<int>{1, 10, 100}, py::arg("count_score_threshold") = py::none(), py::kw_only(),
      py::arg("images") = py::none(), py::arg("predicted_images_only") = false,
      "Scores detections against ground truth as pycocotools' COCOeval does (AP and AR over IoU thresholds, box areas and "
      "max detections), with the precision / recall / F1 table by IoU threshold and the per-class counting error. Images "
      "are matched by name, labels by name.\n"
      "ground_truth: a GroundTruth. predictions: a Predictions; a label the ground truth lacks is an error.\n"
      "iou_thresholds: list of IoU thresholds in [0, 1] (default None: COCO's 0.5, 0.55, ..., 0.95).\n"
      "max_detections: detections kept per image, highest scores first, each >= 1 (default [1, 10, 100]); AP is taken at "
      "the largest: raise it for fields of view holding more than 100 cells.\n"
      "count_score_threshold: the confidence at and above which a detection counts as a cell for the counting error "
      "(default None: each class's F1-best confidence at IoU 0.5).\n"
      "images: score only these ground-truth images: a list of image names, or the path of a file of image ids (see "
      "read_image_ids); a name the ground truth lacks is a ValueError (default None: all images).\n"
      "predicted_images_only: score only the ground-truth images that the predictions cover (default False: an image "
      "without predictions counts all its cells as missed).\n"
      "Returns a DetectionReport. Raises ValueError on bad options or when no predicted image is in the ground truth.");

  py::class_<eval::ClassificationReport>(
      m, "ClassificationReport",
      "The result of evaluate_classification (and ChainReport.types): accuracy and the confusion matrix, with per-class and "
      "macro / weighted precision, recall and F1 in to_dict().")
      .def_readonly("accuracy", &eval::ClassificationReport::accuracy,
                    "The fraction of samples whose predicted label is the true one, in [0, 1] (0 without samples).")
      .def_readonly("labels", &eval::ClassificationReport::labels, "Label names (list of str), indexing the confusion matrix.")
      .def_readonly("confusion", &eval::ClassificationReport::confusion,
                    "The confusion matrix as a list of rows of counts: confusion[true][predicted].")
      .def(
          "to_dict", [](const eval::ClassificationReport& r) { return parse_json(eval::to_json(r)); },
          "The whole report as a dict: labels, accuracy, per-class precision, recall, f1 and support (lists in label "
          "order), macro and weighted averages ({precision, recall, f1}), and confusion.")
      .def(
          "to_markdown", [](const eval::ClassificationReport& r) { return eval::to_markdown(r); },
          "The report as Markdown text with tables.")
      .def(
          "confusion_image", [](const eval::ClassificationReport& r) { return mat_to_numpy(eval::draw_confusion(r)); },
          "The confusion matrix drawn as an 8-bit BGR image, a numpy array (H, W, 3), 48 pixels a cell, each row shaded by "
          "its share of the true class's samples; at most 150 labels (ValueError beyond).");
  m.def("evaluate_classification", &eval::evaluate_classification, py::arg("truth"), py::arg("predicted"), py::arg("labels"),
        "Classification metrics. truth, predicted: label indices (ints in [0, len(labels))) of the same samples, equal in "
        "length. labels: the label names. Returns a ClassificationReport; macro averages are over the classes present in "
        "truth or predictions (as scikit-learn's with zero_division=0). Raises ValueError on mismatched lengths, empty labels, "
        "more than 4,096 labels or an index out of range.");

  py::class_<eval::ChainReport>(
      m, "ChainReport",
      "The result of evaluate_chain: how many true cells were detected, and how many of those were given their true type.")
      .def_readonly("cells", &eval::ChainReport::cells, "The number of true cells, over all images.")
      .def_readonly("detected", &eval::ChainReport::detected,
                    "The number of true cells matched by a predicted cell (IoU >= iou_threshold).")
      .def_readonly("correct", &eval::ChainReport::correct,
                    "The number of detected cells whose predicted type is their true type.")
      .def_readonly("detection_recall", &eval::ChainReport::detection_recall, "detected / cells, in [0, 1] (0 without cells).")
      .def_readonly("end_to_end_accuracy", &eval::ChainReport::end_to_end_accuracy,
                    "correct / cells, in [0, 1] (0 without cells): a cell the detector missed counts as wrong.")
      .def_readonly("types", &eval::ChainReport::types,
                    "A ClassificationReport over the detected cells: true type against predicted type, types in order of "
                    "first appearance.");
  m.def(
      "evaluate_chain",
      [](const py::dict& truth, const py::dict& predicted, double iou_threshold) {
        return eval::evaluate_chain(typed_boxes(truth), typed_boxes(predicted), iou_threshold);
      },
      py::arg("truth"), py::arg("predicted"), py::arg("iou_threshold") = 0.5,
      "Scores detect-then-classify end to end. truth, predicted: {image name: [(box, type[, score]), ...]} with box "
      "[x1, y1, x2, y2] in pixels, type a cell-type name (str) and score the prediction's confidence (default 1; unused "
      "for truth). In each image, predicted cells in decreasing score each match the unmatched true cell they overlap "
      "most, if that IoU is >= iou_threshold (in [0, 1], default 0.5); a match is correct when the types agree. Returns a "
      "ChainReport.");
}

}  // namespace bloodcv::python
