// bloodcv._core: the C++ library for Python. Arrays cross without copies where their layout allows
// (C-contiguous float32 N×4 boxes are read in place; results hand over their C++ buffers). The
// package bloodcv wraps these functions so that torch tensors go in and come out as well.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <fmt/format.h>

#include "bloodcv/bloodcv.hpp"

namespace py = pybind11;
using namespace bloodcv;

namespace {

using FloatArray = py::array_t<float, py::array::c_style | py::array::forcecast>;
using LabelArray = py::array_t<std::int64_t, py::array::c_style | py::array::forcecast>;

std::string shape_of(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t d = 0; d < a.ndim(); ++d) s += (d ? ", " : "") + std::to_string(a.shape(d));
  return s + (a.ndim() == 1 ? ",)" : ")");
}

Span<Box> box_span(const FloatArray& a, const char* name) {
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

// Hands a vector's buffer to numpy: the array owns the vector through a capsule.
template <class T>
py::array_t<T> to_numpy(std::vector<T>&& v) {
  auto* owner = new std::vector<T>(std::move(v));
  py::capsule free_when_done(owner, [](void* p) { delete static_cast<std::vector<T>*>(p); });
  return py::array_t<T>({static_cast<py::ssize_t>(owner->size())}, owner->data(), free_when_done);
}

py::array_t<float> boxes_to_numpy(std::vector<Box>&& v) {
  auto* owner = new std::vector<Box>(std::move(v));
  py::capsule free_when_done(owner, [](void* p) { delete static_cast<std::vector<Box>*>(p); });
  return py::array_t<float>({static_cast<py::ssize_t>(owner->size()), py::ssize_t{4}},
                            reinterpret_cast<const float*>(owner->data()), free_when_done);
}

py::array_t<float> matrix_to_numpy(const OverlapMatrix& m) {
  py::array_t<float> out({static_cast<py::ssize_t>(m.rows()), static_cast<py::ssize_t>(m.cols())});
  std::copy(m.data(), m.data() + m.size(), out.mutable_data());
  return out;
}

// --- images ----------------------------------------------------------------------------------------
int cv_depth(const py::dtype& dtype) {
  if (dtype.is(py::dtype::of<std::uint8_t>())) return CV_8U;
  if (dtype.is(py::dtype::of<std::uint16_t>())) return CV_16U;
  if (dtype.is(py::dtype::of<float>())) return CV_32F;
  throw py::value_error(fmt::format("image dtype must be uint8, uint16 or float32, got {}", py::str(static_cast<const py::handle&>(dtype)).cast<std::string>()));
}

// A cv::Mat over the numpy buffer (no copy); rows may be strided, pixels must be packed.
cv::Mat mat_view(const py::array& image) {
  if (image.ndim() != 2 && image.ndim() != 3)
    throw py::value_error(fmt::format("image must have shape (H, W) or (H, W, C), got {}", shape_of(image)));
  if (image.size() == 0) throw py::value_error(fmt::format("image is empty, shape {}", shape_of(image)));
  const int channels = image.ndim() == 3 ? static_cast<int>(image.shape(2)) : 1;
  if (channels < 1 || channels > 4) throw py::value_error(fmt::format("image must have 1 to 4 channels, got {}", channels));
  const auto item = image.itemsize();
  const bool packed = (image.ndim() == 2 || image.strides(2) == item) && image.strides(1) == item * channels;
  if (!packed || image.strides(0) <= 0)
    throw py::value_error("image pixels must be contiguous within rows (use numpy.ascontiguousarray)");
  const int type = CV_MAKETYPE(cv_depth(image.dtype()), channels);
  return cv::Mat(static_cast<int>(image.shape(0)), static_cast<int>(image.shape(1)), type, const_cast<void*>(image.data()),
                 static_cast<std::size_t>(image.strides(0)));
}

// A tile's pixels for numpy: a view that keeps `source` alive, or a copy of a padded tile.
py::array tile_to_numpy(const cv::Mat& tile, const py::array& source, const cv::Mat& source_mat) {
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

struct PyTile {
  Tile tile;
  py::object image;  // None for plans
};

std::vector<Detection> detections_of(const FloatArray& boxes, const FloatArray& scores, const std::optional<LabelArray>& labels) {
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

py::dict detections_to_dict(const std::vector<Detection>& dets) {
  std::vector<Box> boxes;
  std::vector<float> scores;
  std::vector<std::int64_t> labels;
  for (const Detection& d : dets) {
    boxes.push_back(d.box);
    scores.push_back(d.score);
    labels.push_back(d.label);
  }
  py::dict out;
  out["boxes"] = boxes_to_numpy(std::move(boxes));
  out["scores"] = to_numpy(std::move(scores));
  out["labels"] = to_numpy(std::move(labels));
  return out;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "bloodcv C++ core (use the bloodcv package, which also takes torch tensors)";
  m.attr("__version__") = kVersion;

  // --- geometry -------------------------------------------------------------------------------------
  m.def(
      "box_overlap_matrix",
      [](const FloatArray& a, const FloatArray& b, const std::string& metric) {
        const auto sa = box_span(a, "boxes1"), sb = box_span(b, "boxes2");
        const BoxMetric mt = parse_box_metric(metric);
        OverlapMatrix out;
        {
          py::gil_scoped_release release;
          out = overlap_matrix(sa, sb, mt);
        }
        return matrix_to_numpy(out);
      },
      py::arg("boxes1"), py::arg("boxes2"), py::arg("metric"));
  m.def(
      "box_overlap_aligned",
      [](const FloatArray& a, const FloatArray& b, const std::string& metric) {
        return to_numpy(overlap_aligned(box_span(a, "boxes1"), box_span(b, "boxes2"), parse_box_metric(metric)));
      },
      py::arg("boxes1"), py::arg("boxes2"), py::arg("metric"));
  m.def(
      "box_convert",
      [](const FloatArray& boxes, const std::string& in_fmt, const std::string& out_fmt) {
        const auto from = parse_box_format(in_fmt), to = parse_box_format(out_fmt);
        const auto in = box_span(boxes, "boxes");
        std::vector<Box> out(in.size());
        for (std::size_t i = 0; i < in.size(); ++i) {
          const auto v = convert_box({in[i].x1, in[i].y1, in[i].x2, in[i].y2}, from, to);
          out[i] = {v[0], v[1], v[2], v[3]};
        }
        return boxes_to_numpy(std::move(out));
      },
      py::arg("boxes"), py::arg("in_fmt"), py::arg("out_fmt"));
  m.def(
      "clip_boxes_to_image",
      [](const FloatArray& boxes, std::pair<int, int> size) {
        const auto in = box_span(boxes, "boxes");
        if (size.first < 0 || size.second < 0)
          throw py::value_error(fmt::format("size must be (height, width) >= 0, got ({}, {})", size.first, size.second));
        std::vector<Box> out(in.size());
        for (std::size_t i = 0; i < in.size(); ++i)
          out[i] = clip_box(in[i], static_cast<float>(size.second), static_cast<float>(size.first));
        return boxes_to_numpy(std::move(out));
      },
      py::arg("boxes"), py::arg("size"));

  // --- NMS family -----------------------------------------------------------------------------------
  m.def(
      "nms",
      [](const FloatArray& boxes, const FloatArray& scores, double iou_threshold) {
        const auto b = box_span(boxes, "boxes");
        const auto s = vector_span<float>(scores, "scores");
        std::vector<std::int64_t> keep;
        {
          py::gil_scoped_release release;
          keep = nms(b, s, iou_threshold);
        }
        return to_numpy(std::move(keep));
      },
      py::arg("boxes"), py::arg("scores"), py::arg("iou_threshold"));
  m.def(
      "batched_nms",
      [](const FloatArray& boxes, const FloatArray& scores, const LabelArray& idxs, double iou_threshold) {
        const auto b = box_span(boxes, "boxes");
        const auto s = vector_span<float>(scores, "scores");
        const auto l = vector_span<std::int64_t>(idxs, "idxs");
        std::vector<std::int64_t> keep;
        {
          py::gil_scoped_release release;
          keep = batched_nms(b, s, l, iou_threshold);
        }
        return to_numpy(std::move(keep));
      },
      py::arg("boxes"), py::arg("scores"), py::arg("idxs"), py::arg("iou_threshold"));

  py::class_<Suppressor, std::shared_ptr<Suppressor>>(m, "Suppressor",
                                                      "An NMS strategy: call it with boxes, scores, labels and predicted IoUs.")
      .def(
          "suppress",
          [](const Suppressor& self, const FloatArray& boxes, const FloatArray& scores, const std::optional<LabelArray>& labels,
             const std::optional<FloatArray>& predicted_ious) {
            const ScoredBoxes in{box_span(boxes, "boxes"), vector_span<float>(scores, "scores"),
                                 optional_span<std::int64_t>(labels, "labels"),
                                 optional_span<float>(predicted_ious, "predicted_ious")};
            Suppression s;
            {
              py::gil_scoped_release release;
              s = self.suppress(in);
            }
            return py::make_tuple(to_numpy(std::move(s.keep)), boxes_to_numpy(std::move(s.boxes)), to_numpy(std::move(s.scores)));
          },
          py::arg("boxes"), py::arg("scores"), py::arg("labels") = py::none(), py::arg("predicted_ious") = py::none(),
          "Returns (keep, boxes, scores): kept indices in rank order, their output boxes and scores.");

  py::class_<HardNms, Suppressor, std::shared_ptr<HardNms>>(m, "HardNms")
      .def(py::init([](double iou_threshold, const std::string& metric, bool class_aware, float score_threshold,
                       std::int64_t max_detections) {
             return std::make_shared<HardNms>(
                 HardNmsOptions{iou_threshold, parse_box_metric(metric), class_aware, score_threshold, max_detections});
           }),
           py::arg("iou_threshold") = 0.5, py::arg("metric") = "iou", py::arg("class_aware") = true,
           py::arg("score_threshold") = -std::numeric_limits<float>::infinity(), py::arg("max_detections") = kNoLimit);

  py::class_<SoftNms, Suppressor, std::shared_ptr<SoftNms>>(m, "SoftNms")
      .def(py::init([](const std::string& method, double iou_threshold, float sigma, float score_threshold, bool class_aware,
                       std::int64_t max_detections) {
             SoftNmsMethod kind;
             if (method == "linear")
               kind = SoftNmsMethod::Linear;
             else if (method == "gaussian")
               kind = SoftNmsMethod::Gaussian;
             else
               throw py::value_error(fmt::format("method must be 'linear' or 'gaussian', got '{}'", method));
             return std::make_shared<SoftNms>(SoftNmsOptions{kind, iou_threshold, sigma, score_threshold, class_aware, max_detections});
           }),
           py::arg("method") = "gaussian", py::arg("iou_threshold") = 0.3, py::arg("sigma") = 0.5f,
           py::arg("score_threshold") = 0.001f, py::arg("class_aware") = true, py::arg("max_detections") = kNoLimit);

  py::class_<IouAwareNms, Suppressor, std::shared_ptr<IouAwareNms>>(m, "IouAwareNms")
      .def(py::init([](float alpha, double iou_threshold, bool class_aware, float score_threshold, std::int64_t max_detections) {
             return std::make_shared<IouAwareNms>(IouAwareNmsOptions{
                 alpha, HardNmsOptions{iou_threshold, BoxMetric::IoU, class_aware, score_threshold, max_detections}});
           }),
           py::arg("alpha") = 0.5f, py::arg("iou_threshold") = 0.5, py::arg("class_aware") = true,
           py::arg("score_threshold") = -std::numeric_limits<float>::infinity(), py::arg("max_detections") = kNoLimit);

  py::class_<WeightedBoxFusion, Suppressor, std::shared_ptr<WeightedBoxFusion>>(m, "WeightedBoxFusion")
      .def(py::init([](double iou_threshold, double skip_box_threshold, int num_models) {
             return std::make_shared<WeightedBoxFusion>(WeightedBoxFusionOptions{iou_threshold, skip_box_threshold, num_models});
           }),
           py::arg("iou_threshold") = 0.55, py::arg("skip_box_threshold") = 0.0, py::arg("num_models") = 1);

  py::class_<NonMaxMerge, Suppressor, std::shared_ptr<NonMaxMerge>>(m, "NonMaxMerge")
      .def(py::init([](double match_threshold, const std::string& metric, bool greedy, bool class_aware) {
             return std::make_shared<NonMaxMerge>(NonMaxMergeOptions{match_threshold, parse_box_metric(metric), greedy, class_aware});
           }),
           py::arg("match_threshold") = 0.5, py::arg("metric") = "ios", py::arg("greedy") = true, py::arg("class_aware") = true);

  // --- tiling ---------------------------------------------------------------------------------------
  py::class_<PyTile>(m, "Tile", "A tile: its region (x, y, width, height) in the image and its pixels.")
      .def_property_readonly("x", [](const PyTile& t) { return t.tile.region.x; })
      .def_property_readonly("y", [](const PyTile& t) { return t.tile.region.y; })
      .def_property_readonly("width", [](const PyTile& t) { return t.tile.region.width; })
      .def_property_readonly("height", [](const PyTile& t) { return t.tile.region.height; })
      .def_property_readonly("region", [](const PyTile& t) {
        const cv::Rect& r = t.tile.region;
        return py::make_tuple(r.x, r.y, r.width, r.height);
      })
      .def_property_readonly("whole_image", [](const PyTile& t) { return t.tile.whole_image; })
      .def_readonly("image", &PyTile::image)
      .def("__repr__", [](const PyTile& t) {
        const cv::Rect& r = t.tile.region;
        return fmt::format("Tile(x={}, y={}, width={}, height={}{})", r.x, r.y, r.width, r.height,
                           t.tile.whole_image ? ", whole_image=True" : "");
      });

  py::class_<GridTiler>(m, "GridTiler")
      .def(py::init([](std::pair<int, int> tile_size, double overlap, std::optional<int> overlap_pixels, bool whole_image,
                       double pad_value) {
             GridTilerOptions o;
             o.tile_size = {tile_size.first, tile_size.second};
             o.overlap_ratio = overlap;
             o.overlap_pixels = overlap_pixels;
             o.whole_image_pass = whole_image;
             o.pad_value = cv::Scalar::all(pad_value);
             return GridTiler(o);
           }),
           py::arg("tile_size") = std::make_pair(640, 640), py::arg("overlap") = 0.15, py::arg("overlap_pixels") = py::none(),
           py::arg("whole_image") = false, py::arg("pad_value") = 114.0)
      .def_property_readonly("overlap_pixels", [](const GridTiler& t) { return py::make_tuple(t.overlap().width, t.overlap().height); })
      .def(
          "plan",
          [](const GridTiler& self, std::pair<int, int> image_size) {
            std::vector<PyTile> out;
            for (Tile& t : self.plan({image_size.first, image_size.second})) out.push_back({std::move(t), py::none()});
            return out;
          },
          py::arg("image_size"), "Regions for an image of (width, height), without pixels.")
      .def(
          "tiles",
          [](const GridTiler& self, const py::array& image) {
            const cv::Mat source = mat_view(image);
            std::vector<PyTile> out;
            for (Tile& t : self.tiles(source)) {
              py::object pixels = tile_to_numpy(t.image, image, source);
              out.push_back({std::move(t), std::move(pixels)});
            }
            return out;
          },
          py::arg("image"), "Tiles of an (H, W) or (H, W, C) image: numpy views of it, padded copies where it is smaller.");

  m.def(
      "merge_tile_detections",
      [](const std::vector<PyTile>& tiles, const std::vector<FloatArray>& boxes, const std::vector<FloatArray>& scores,
         const std::optional<std::vector<LabelArray>>& labels, std::pair<int, int> image_size,
         std::shared_ptr<Suppressor> merger, double match_threshold, const std::string& metric, bool class_aware) {
        if (boxes.size() != tiles.size() || scores.size() != tiles.size() || (labels && labels->size() != tiles.size()))
          throw py::value_error(fmt::format("need one boxes, scores (and labels) array per tile: {} tiles, {} boxes, {} scores",
                                            tiles.size(), boxes.size(), scores.size()));
        std::vector<std::vector<Detection>> per_tile;
        std::vector<Tile> plain;
        for (std::size_t i = 0; i < tiles.size(); ++i) {
          per_tile.push_back(detections_of(boxes[i], scores[i], labels ? std::optional<LabelArray>((*labels)[i]) : std::nullopt));
          plain.push_back(tiles[i].tile);
        }
        const cv::Size size{image_size.first, image_size.second};
        const auto merged = merger ? merge_tile_detections(per_tile, plain, size, *merger)
                                   : merge_tile_detections(per_tile, plain, size,
                                                           SeamMergeOptions{match_threshold, parse_box_metric(metric), class_aware});
        return detections_to_dict(merged);
      },
      py::arg("tiles"), py::arg("boxes"), py::arg("scores"), py::arg("labels") = py::none(), py::arg("image_size"),
      py::arg("merger") = py::none(), py::arg("match_threshold") = 0.5, py::arg("metric") = "iou",
      py::arg("class_aware") = true);
}
