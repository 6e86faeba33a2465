// Conversions shared by the binding files: numpy arrays to C++ views and C++ results to numpy
// without copies where the layout allows.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "bloodcv/bloodcv.hpp"

namespace bloodcv::python {

namespace py = pybind11;

using FloatArray = py::array_t<float, py::array::c_style | py::array::forcecast>;
using LabelArray = py::array_t<std::int64_t, py::array::c_style | py::array::forcecast>;

// Any array-like (numpy, a torch tensor on any device, nested lists) as a C-contiguous numpy array of
// float32 / int64: bloodcv._arrays.to_numpy does the torch part.
// `name` names the value in the error for what does not convert.
inline FloatArray to_float_array(const py::handle& value, const std::string& name) {
  return py::cast<FloatArray>(py::module_::import("bloodcv._arrays").attr("to_numpy")(value, py::module_::import("numpy").attr("float32"), name));
}
inline LabelArray to_label_array(const py::handle& value, const std::string& name) {
  return py::cast<LabelArray>(py::module_::import("bloodcv._arrays").attr("to_numpy")(value, py::module_::import("numpy").attr("int64"), name));
}
// `result` as the kind of array `reference` is: a torch tensor on its device, or numpy.
inline py::object like(const py::object& result, const py::handle& reference) {
  return py::module_::import("bloodcv._arrays").attr("like")(result, reference);
}

inline std::string shape_of(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t d = 0; d < a.ndim(); ++d) s += (d ? ", " : "") + std::to_string(a.shape(d));
  return s + (a.ndim() == 1 ? ",)" : ")");
}

inline Span<Box> box_span(const FloatArray& a, const char* name) {
  if (a.ndim() != 2 || a.shape(1) != 4)
    throw py::value_error(fmt::format("{} must have shape (N, 4), got {}", name, shape_of(a)));
  return {reinterpret_cast<const Box*>(a.data()), static_cast<std::size_t>(a.shape(0))};
}

template <class T>
Span<T> vector_span(const py::array_t<T, py::array::c_style | py::array::forcecast>& a, const char* name) {
  if (a.ndim() != 1) throw py::value_error(fmt::format("{} must have shape (N,), got {}", name, shape_of(a)));
  return {a.data(), static_cast<std::size_t>(a.shape(0))};
}

template <class T>
Span<T> optional_span(const std::optional<py::array_t<T, py::array::c_style | py::array::forcecast>>& a, const char* name) {
  return a ? vector_span<T>(*a, name) : Span<T>{};
}

// A private copy of an input the library then reads without the GIL: another Python thread may write the
// caller's numpy array meanwhile, and a NaN written after validation crashed the process.
template <class T>
std::vector<T> owned(Span<T> s) {
  return {s.begin(), s.end()};
}

// Hands a vector's buffer to numpy: the array owns the vector through a capsule.
template <class T>
py::array_t<T> to_numpy(std::vector<T>&& v) {
  auto* owner = new std::vector<T>(std::move(v));
  py::capsule free_when_done(owner, [](void* p) { delete static_cast<std::vector<T>*>(p); });
  return py::array_t<T>({static_cast<py::ssize_t>(owner->size())}, owner->data(), free_when_done);
}

inline py::array_t<float> boxes_to_numpy(std::vector<Box>&& v) {
  auto* owner = new std::vector<Box>(std::move(v));
  py::capsule free_when_done(owner, [](void* p) { delete static_cast<std::vector<Box>*>(p); });
  return py::array_t<float>({static_cast<py::ssize_t>(owner->size()), py::ssize_t{4}},
                            reinterpret_cast<const float*>(owner->data()), free_when_done);
}

inline py::array_t<float> matrix_to_numpy(const OverlapMatrix& m) {
  py::array_t<float> out({static_cast<py::ssize_t>(m.rows()), static_cast<py::ssize_t>(m.cols())});
  std::copy(m.data(), m.data() + m.size(), out.mutable_data());
  return out;
}

// --- images ----------------------------------------------------------------------------------------
inline int cv_depth(const py::dtype& dtype) {
  if (dtype.is(py::dtype::of<std::uint8_t>())) return CV_8U;
  if (dtype.is(py::dtype::of<std::uint16_t>())) return CV_16U;
  if (dtype.is(py::dtype::of<float>())) return CV_32F;
  throw py::value_error(fmt::format("image dtype must be uint8, uint16 or float32, got {}", py::str(static_cast<const py::handle&>(dtype)).cast<std::string>()));
}

// A cv::Mat over the numpy buffer when its pixels are packed within rows (rows may be strided); otherwise
// (a flipped, transposed or channel-sliced array) over a packed copy that the Mat owns.
inline cv::Mat mat_view(const py::array& image) {
  if (image.ndim() != 2 && image.ndim() != 3)
    throw py::value_error(fmt::format("image must have shape (H, W) or (H, W, C), got {}", shape_of(image)));
  if (image.size() == 0) throw py::value_error(fmt::format("image is empty, shape {}", shape_of(image)));
  const int channels = image.ndim() == 3 ? static_cast<int>(image.shape(2)) : 1;
  if (channels < 1 || channels > 4) throw py::value_error(fmt::format("image must have 1 to 4 channels, got {}", channels));
  const auto item = image.itemsize();
  const bool packed = (image.ndim() == 2 || image.strides(2) == item) && image.strides(1) == item * channels;
  if (!packed || image.strides(0) <= 0)
    return mat_view(py::module_::import("numpy").attr("ascontiguousarray")(image).cast<py::array>()).clone();
  const int type = CV_MAKETYPE(cv_depth(image.dtype()), channels);
  return cv::Mat(static_cast<int>(image.shape(0)), static_cast<int>(image.shape(1)), type, const_cast<void*>(image.data()),
                 static_cast<std::size_t>(image.strides(0)));
}

// A tile's pixels for numpy: a view that keeps `source` alive, or a copy of a padded tile.
inline py::array tile_to_numpy(const cv::Mat& tile, const py::array& source, const cv::Mat& source_mat) {
  const py::ssize_t item = static_cast<py::ssize_t>(tile.elemSize1());
  std::vector<py::ssize_t> shape{tile.rows, tile.cols}, strides{static_cast<py::ssize_t>(tile.step[0]),
                                                                static_cast<py::ssize_t>(tile.elemSize())};
  if (source.ndim() == 3) {
    shape.push_back(tile.channels());
    strides.push_back(item);
  }
  const bool is_view = tile.datastart == source_mat.datastart;
  if (is_view) return py::array(source.dtype(), shape, strides, tile.data, source);
  py::array copy(source.dtype(), shape, strides);
  std::memcpy(copy.mutable_data(), tile.data, tile.step[0] * static_cast<std::size_t>(tile.rows));
  return copy;
}

// Boxes, scores and labels arrays → detections (validated).
inline std::vector<Detection> detections_of(const FloatArray& boxes, const FloatArray& scores, const std::optional<LabelArray>& labels) {
  const ScoredBoxes in{box_span(boxes, "boxes"), vector_span<float>(scores, "scores"), optional_span<std::int64_t>(labels, "labels")};
  in.validate();
  std::vector<Detection> out(in.boxes.size());
  for (std::size_t i = 0; i < out.size(); ++i) {
    out[i].box = in.boxes[i];
    out[i].score = in.scores[i];
    out[i].label = in.labels.empty() ? 0 : in.labels[i];
  }
  return out;
}

// A dict of "boxes", "scores"[, "labels"][, "predicted_ious"] arrays → detections (validated); `who`
// names the dict's maker in messages.
inline std::vector<Detection> detections_from_dict(const py::dict& d, const std::string& who) {
  if (!d.contains("boxes") || !d.contains("scores"))
    throw py::value_error(fmt::format("{} must give a dict with \"boxes\" and \"scores\" (and \"labels\", \"predicted_ious\")", who));
  auto dets = detections_of(to_float_array(d["boxes"], who + ": boxes"), to_float_array(d["scores"], who + ": scores"),
                            d.contains("labels") ? std::optional<LabelArray>(to_label_array(d["labels"], who + ": labels")) : std::nullopt);
  if (d.contains("predicted_ious")) {
    const auto ious = to_float_array(d["predicted_ious"], who + ": predicted_ious");
    if (static_cast<std::size_t>(ious.size()) != dets.size())
      throw py::value_error(fmt::format("{}: {} predicted_ious for {} boxes", who, ious.size(), dets.size()));
    for (std::size_t i = 0; i < dets.size(); ++i) dets[i].predicted_iou = ious.data()[i];
  }
  return dets;
}

// Detections → {"boxes", "scores", "labels"} numpy arrays.
inline py::dict detections_to_dict(const std::vector<Detection>& dets) {
  std::vector<Box> boxes;
  std::vector<float> scores;
  std::vector<std::int64_t> labels;
  std::vector<float> ious;
  for (const Detection& d : dets) {
    boxes.push_back(d.box);
    scores.push_back(d.score);
    labels.push_back(d.label);
    if (d.predicted_iou) ious.push_back(*d.predicted_iou);
  }
  py::dict out;
  out["boxes"] = boxes_to_numpy(std::move(boxes));
  out["scores"] = to_numpy(std::move(scores));
  out["labels"] = to_numpy(std::move(labels));
  if (!dets.empty() && ious.size() == dets.size()) out["predicted_ious"] = to_numpy(std::move(ious));
  return out;
}

// A copy of an 8-bit BGR (or any) cv::Mat as a new (H, W[, C]) numpy array.
inline py::array mat_to_numpy(const cv::Mat& mat) {
  const cv::Mat m = mat.isContinuous() ? mat : mat.clone();
  py::dtype dtype = m.depth() == CV_8U ? py::dtype::of<std::uint8_t>() : m.depth() == CV_16U ? py::dtype::of<std::uint16_t>() : py::dtype::of<float>();
  std::vector<py::ssize_t> shape{m.rows, m.cols};
  if (m.channels() > 1) shape.push_back(m.channels());
  py::array out(dtype, shape);
  std::memcpy(out.mutable_data(), m.data, m.total() * m.elemSize());
  return out;
}

// How a source was read, for AnalysisResult.slide and SlidePlan.info.
inline py::dict slide_info_dict(const SlideInfo& s) {
  py::dict d;
  d["source"] = s.source;
  d["levels"] = s.levels;
  d["microns_per_pixel"] = s.microns_per_pixel ? py::cast(*s.microns_per_pixel) : py::none();
  d["downsample"] = s.downsample;
  d["level"] = s.level;
  d["tiles_skipped"] = s.tiles_skipped;
  d["tile_errors"] = s.tile_errors;
  return d;
}

std::shared_ptr<const TileMerger> merger_of(const py::object& merger, const SeamMergeOptions& seam);
void bind_geometry(py::module_& m);
void bind_runtime(py::module_& m);
void bind_stain(py::module_& m);
void bind_decoders(py::module_& m);
void bind_eval(py::module_& m);
void bind_sources(py::module_& m);
void bind_slide_analysis(py::class_<Pipeline, std::shared_ptr<Pipeline>>& pipeline);

}  // namespace bloodcv::python
