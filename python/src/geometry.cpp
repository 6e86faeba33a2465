// Geometry, the NMS family and tiling for Python.
#include "conversions.hpp"

namespace bloodcv::python {

namespace {

struct PyTile {
  Tile tile;
  py::object image;  // None for plans
};

}  // namespace

void bind_geometry(py::module_& m) {
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

  py::class_<Tiler, std::shared_ptr<Tiler>>(m, "Tiler", "Cuts images into tiles (GridTiler).");
  py::class_<GridTiler, Tiler, std::shared_ptr<GridTiler>>(m, "GridTiler")
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

}  // namespace bloodcv::python
