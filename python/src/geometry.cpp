// Geometry, the NMS family and tiling for Python.
#include "conversions.hpp"

namespace bloodcv::python {

namespace {

struct PyTile {
  Tile tile;
  py::object image;  // None for plans
};

// Lets a Python class implement TileMerger: merge(tiles, boxes, scores, labels, image_size) gets a list of
// Tile (without pixels) and per tile the tile-local boxes (N, 4), scores (N,) and labels (N,), and returns
// {"boxes", "scores"[, "labels"]} in image coordinates.
class PyTileMerger : public TileMerger {
 public:
  std::vector<Detection> merge(const std::vector<std::vector<Detection>>& per_tile, const std::vector<Tile>& tiles,
                               cv::Size image_size) const override {
    py::gil_scoped_acquire gil;
    const py::function override = py::get_override(static_cast<const TileMerger*>(this), "merge");
    if (!override) throw std::runtime_error("a Python TileMerger must implement merge(tiles, boxes, scores, labels, image_size)");
    py::list py_tiles, boxes, scores, labels;
    for (std::size_t t = 0; t < tiles.size(); ++t) {
      py_tiles.append(py::cast(PyTile{tiles[t], py::none()}));
      const py::dict d = detections_to_dict(per_tile[t]);
      boxes.append(d["boxes"]);
      scores.append(d["scores"]);
      labels.append(d["labels"]);
    }
    const py::object result = override(py_tiles, boxes, scores, labels, py::make_tuple(image_size.width, image_size.height));
    if (!py::isinstance<py::dict>(result) || !result.contains("boxes") || !result.contains("scores"))
      throw py::value_error("merge() must return a dict with \"boxes\" and \"scores\" (and \"labels\")");
    return detections_of(to_float_array(result["boxes"], "merge(): boxes"), to_float_array(result["scores"], "merge(): scores"),
                         result.contains("labels") ? std::optional<LabelArray>(to_label_array(result["labels"], "merge(): labels")) : std::nullopt);
  }
};

// Lets a Python class implement Suppressor: suppress(boxes, scores, labels, predicted_ious) gets numpy
// arrays (labels, predicted_ious may be None) and returns (keep, boxes, scores): kept indices in rank order
// with their output boxes and scores.
class PySuppressor : public Suppressor {
 public:
  Suppression suppress(const ScoredBoxes& in) const override {
    py::gil_scoped_acquire gil;
    const py::function override = py::get_override(static_cast<const Suppressor*>(this), "suppress");
    if (!override) throw std::runtime_error("a Python Suppressor must implement suppress(boxes, scores, labels, predicted_ious)");
    in.validate();
    const std::size_t n = in.boxes.size();
    py::object labels = py::none(), ious = py::none();
    if (!in.labels.empty()) labels = to_numpy(std::vector<std::int64_t>(in.labels.begin(), in.labels.end()));
    if (!in.predicted_ious.empty()) ious = to_numpy(std::vector<float>(in.predicted_ious.begin(), in.predicted_ious.end()));
    const py::object result = override(boxes_to_numpy(std::vector<Box>(in.boxes.begin(), in.boxes.end())),
                                       to_numpy(std::vector<float>(in.scores.begin(), in.scores.end())), labels, ious);
    const py::tuple t = py::cast<py::tuple>(result);
    if (t.size() != 3) throw py::value_error("suppress() must return (keep, boxes, scores)");
    const LabelArray keep = to_label_array(t[0], "suppress(): keep");
    const FloatArray boxes = to_float_array(t[1], "suppress(): boxes"), scores = to_float_array(t[2], "suppress(): scores");
    const auto kept = vector_span<std::int64_t>(keep, "keep");
    const auto out_boxes = box_span(boxes, "boxes");
    const auto out_scores = vector_span<float>(scores, "scores");
    if (out_boxes.size() != kept.size() || out_scores.size() != kept.size())
      throw py::value_error(fmt::format("suppress() returned {} indices, {} boxes and {} scores", kept.size(), out_boxes.size(), out_scores.size()));
    for (const std::int64_t k : kept)
      if (k < 0 || static_cast<std::size_t>(k) >= n) throw py::value_error(fmt::format("suppress() kept index {} of {} boxes", k, n));
    return {std::vector<std::int64_t>(kept.begin(), kept.end()), std::vector<Box>(out_boxes.begin(), out_boxes.end()),
            std::vector<float>(out_scores.begin(), out_scores.end())};
  }
};

// Lets a Python class implement Tiler: plan(image_size) returns a list of Tile regions inside the image;
// bloodcv cuts them (views of the image) itself.
class PyTiler : public Tiler {
 public:
  std::vector<Tile> plan(cv::Size image_size) const override {
    py::gil_scoped_acquire gil;
    const py::function override = py::get_override(static_cast<const Tiler*>(this), "plan");
    if (!override) throw std::runtime_error("a Python Tiler must implement plan(image_size)");
    std::vector<Tile> out;
    for (const py::handle item : override(py::make_tuple(image_size.width, image_size.height))) {
      const Tile tile = py::cast<const PyTile&>(item).tile;
      if ((tile.region & cv::Rect({0, 0}, image_size)) != tile.region || tile.region.empty())
        throw py::value_error(fmt::format("plan() gave the region ({}, {}, {}, {}), not inside the {}x{} image", tile.region.x, tile.region.y,
                                          tile.region.width, tile.region.height, image_size.width, image_size.height));
      out.push_back(tile);
    }
    if (out.empty()) throw py::value_error("plan() gave no tiles");
    return out;
  }
  std::vector<Tile> tiles(const cv::Mat& image) const override {
    std::vector<Tile> out = plan(image.size());
    for (Tile& t : out) t.image = image(t.region);
    return out;
  }
};

}  // namespace

// A Pipeline's or merge_tile_detections' merger from Python: None (seam merging with these options), a
// TileMerger, or a Suppressor, whose strategy then gets all tiles' detections pooled.
std::shared_ptr<const TileMerger> merger_of(const py::object& merger, const SeamMergeOptions& seam) {
  if (merger.is_none()) return std::make_shared<SeamMerger>(seam);
  if (py::isinstance<TileMerger>(merger)) return merger.cast<std::shared_ptr<TileMerger>>();
  if (py::isinstance<Suppressor>(merger)) return std::make_shared<PooledMerger>(merger.cast<std::shared_ptr<Suppressor>>());
  throw py::type_error(fmt::format("merger must be None, a TileMerger or a Suppressor, got {}",
                                   py::str(py::type::handle_of(merger).attr("__name__")).cast<std::string>()));
}

void bind_geometry(py::module_& m) {
  // --- geometry -------------------------------------------------------------------------------------
  m.def(
      "box_overlap_matrix",
      [](const FloatArray& a, const FloatArray& b, const std::string& metric) {
        const auto sa = owned(box_span(a, "boxes1")), sb = owned(box_span(b, "boxes2"));
        const BoxMetric mt = parse_box_metric(metric);
        OverlapMatrix out;
        {
          py::gil_scoped_release release;
          out = overlap_matrix(sa, sb, mt);
        }
        return matrix_to_numpy(out);
      },
      py::arg("boxes1"), py::arg("boxes2"), py::arg("metric"),
      "Overlap of every pair: boxes1 (N, 4) and boxes2 (M, 4) float32 [x1, y1, x2, y2] in pixels; metric 'iou', 'ios', "
      "'giou' or 'diou'. Returns a float32 (N, M) matrix. bloodcv.box_iou and its siblings wrap it for torch tensors.");
  m.def(
      "box_overlap_aligned",
      [](const FloatArray& a, const FloatArray& b, const std::string& metric) {
        return to_numpy(overlap_aligned(box_span(a, "boxes1"), box_span(b, "boxes2"), parse_box_metric(metric)));
      },
      py::arg("boxes1"), py::arg("boxes2"), py::arg("metric"),
      "Overlap of aligned pairs: boxes1 and boxes2 both (N, 4) float32 [x1, y1, x2, y2] in pixels; metric 'iou', 'ios', "
      "'giou' or 'diou'. Returns float32 (N,): metric(boxes1[i], boxes2[i]).");
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
      py::arg("boxes"), py::arg("in_fmt"), py::arg("out_fmt"),
      "Converts (N, 4) float32 boxes between 'xyxy' (corners), 'xywh' (top-left corner and size) and 'cxcywh' (centre "
      "and size), all in pixels. Returns a new float32 (N, 4) array.");
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
      py::arg("boxes"), py::arg("size"),
      "Clamps (N, 4) float32 [x1, y1, x2, y2] boxes to an image of size (height, width) in pixels: x to [0, width], "
      "y to [0, height]. Returns a new float32 (N, 4) array.");

  // --- NMS family -----------------------------------------------------------------------------------
  m.def(
      "nms",
      [](const FloatArray& boxes, const FloatArray& scores, double iou_threshold) {
        const auto b = owned(box_span(boxes, "boxes"));
        const auto s = owned(vector_span<float>(scores, "scores"));
        std::vector<std::int64_t> keep;
        {
          py::gil_scoped_release release;
          keep = nms(b, s, iou_threshold);
        }
        return to_numpy(std::move(keep));
      },
      py::arg("boxes"), py::arg("scores"), py::arg("iou_threshold"),
      "torchvision.ops.nms on numpy: boxes (N, 4) float32 [x1, y1, x2, y2] in pixels, scores (N,) float32; a box is "
      "suppressed when its IoU with a kept, higher-scoring box is > iou_threshold (in [0, 1]). Returns the kept indices "
      "(int64) by decreasing score, equal scores by lower index.");
  m.def(
      "batched_nms",
      [](const FloatArray& boxes, const FloatArray& scores, const LabelArray& idxs, double iou_threshold) {
        const auto b = owned(box_span(boxes, "boxes"));
        const auto s = owned(vector_span<float>(scores, "scores"));
        const auto l = owned(vector_span<std::int64_t>(idxs, "idxs"));
        std::vector<std::int64_t> keep;
        {
          py::gil_scoped_release release;
          keep = batched_nms(b, s, l, iou_threshold);
        }
        return to_numpy(std::move(keep));
      },
      py::arg("boxes"), py::arg("scores"), py::arg("idxs"), py::arg("iou_threshold"),
      "torchvision.ops.batched_nms on numpy: nms within each category of idxs (N,) int64, never across them. Returns "
      "the kept indices (int64) by decreasing score.");

  py::class_<Suppressor, PySuppressor, std::shared_ptr<Suppressor>>(
      m, "Suppressor",
      "Base class of the NMS family: HardNms, SoftNms, IouAwareNms, WeightedBoxFusion and NonMaxMerge. Call a strategy as "
      "strategy(boxes, scores, labels=None, predicted_ious=None) with boxes (N, 4) [x1, y1, x2, y2] in pixels, scores (N,), "
      "labels (N,) int and predicted IoUs (N,) in [0, 1], as numpy arrays or torch tensors; it returns "
      "Suppression(keep, boxes, scores). Every strategy ranks boxes by score, highest first, equal scores by lower index. "
      "A Pipeline or merge_tile_detections takes any strategy as its merger. Subclass it in Python and implement "
      "suppress(boxes, scores, labels, predicted_ious) returning (keep, boxes, scores) to plug in your own.")
      .def(py::init<>(), "A suppressor to subclass: call super().__init__() from the subclass's __init__.")
      .def(
          "suppress",
          [](const Suppressor& self, const FloatArray& boxes, const FloatArray& scores, const std::optional<LabelArray>& labels,
             const std::optional<FloatArray>& predicted_ious) {
            const auto b = owned(box_span(boxes, "boxes"));
            const auto sc = owned(vector_span<float>(scores, "scores"));
            const auto l = owned(optional_span<std::int64_t>(labels, "labels"));
            const auto p = owned(optional_span<float>(predicted_ious, "predicted_ious"));
            const ScoredBoxes in{b, sc, l, p};
            Suppression s;
            {
              py::gil_scoped_release release;
              s = self.suppress(in);
            }
            return py::make_tuple(to_numpy(std::move(s.keep)), boxes_to_numpy(std::move(s.boxes)), to_numpy(std::move(s.scores)));
          },
          py::arg("boxes"), py::arg("scores"), py::arg("labels") = py::none(), py::arg("predicted_ious") = py::none(),
          "Runs the strategy on numpy arrays (calling the strategy does the same and takes torch tensors too). "
          "boxes: float32 (N, 4) [x1, y1, x2, y2] in pixels. scores: float32 (N,). labels: int64 (N,), or None when all "
          "boxes are of one class. predicted_ious: float32 (N,) in [0, 1], or None when the detector predicts none. "
          "Returns a tuple (keep, boxes, scores): the kept input indices (int64 (K,)) in rank order, their output boxes "
          "(float32 (K, 4), merged where the strategy merges) and scores (float32 (K,), rescored where it rescores). "
          "Raises ValueError on mismatched lengths, non-finite or inverted boxes, NaN scores or predicted IoUs outside [0, 1].");

  py::class_<HardNms, Suppressor, std::shared_ptr<HardNms>>(
      m, "HardNms",
      "Greedy (hard) NMS: in decreasing score, a box is kept unless a kept box overlaps it by more than iou_threshold. "
      "Output boxes and scores are the input's. With the defaults it keeps what torchvision's batched_nms keeps (nms when "
      "no labels are given).")
      .def(py::init([](double iou_threshold, const std::string& metric, bool class_aware, float score_threshold,
                       std::int64_t max_detections, std::vector<double> class_iou_thresholds) {
             return std::make_shared<HardNms>(HardNmsOptions{iou_threshold, parse_box_metric(metric), class_aware, score_threshold,
                                                             max_detections, std::move(class_iou_thresholds)});
           }),
           py::arg("iou_threshold") = 0.5, py::arg("metric") = "iou", py::arg("class_aware") = true,
           py::arg("score_threshold") = -std::numeric_limits<float>::infinity(), py::arg("max_detections") = kNoLimit,
           py::arg("class_iou_thresholds") = std::vector<double>{},
           "iou_threshold: a box is suppressed when its overlap with a kept box is > this, in [0, 1] (default 0.5).\n"
           "metric: the overlap: 'iou' (default), 'ios' (intersection over the smaller box, for boxes cut by tile seams), "
           "'giou', or 'diou' (DIoU-NMS).\n"
           "class_aware: boxes of different labels never suppress each other (default True); without labels all are one class.\n"
           "score_threshold: boxes scoring below this are dropped first (default -inf: none).\n"
           "max_detections: keep at most this many boxes, -1 for no limit (default).\n"
           "class_iou_thresholds: a threshold per label index, each in [0, 1], in place of iou_threshold for the boxes of that "
           "label (class-aware only; labels beyond the list use iou_threshold; default [] : none).");

  py::class_<SoftNms, Suppressor, std::shared_ptr<SoftNms>>(
      m, "SoftNms",
      "Soft-NMS (Bodla et al. 2017): in decreasing score, each kept box lowers the scores of the boxes it overlaps (by IoU) "
      "instead of removing them; a box whose score falls below score_threshold is dropped. Output boxes are the input's, "
      "scores the decayed ones, kept in decreasing decayed score.")
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
           py::arg("score_threshold") = 0.001f, py::arg("class_aware") = true, py::arg("max_detections") = kNoLimit,
           "method: 'gaussian' (default): scores are multiplied by exp(-IoU^2 / sigma); 'linear': by (1 - IoU) where "
           "IoU > iou_threshold.\n"
           "iou_threshold: in [0, 1], used by 'linear' only (default 0.3).\n"
           "sigma: > 0, used by 'gaussian' only (default 0.5); smaller decays faster.\n"
           "score_threshold: finite; boxes scoring below this, at the start or after decay, are dropped (default 0.001).\n"
           "class_aware: only boxes of the same label decay each other (default True).\n"
           "max_detections: keep at most this many boxes, -1 for no limit (default).");

  py::class_<IouAwareNms, Suppressor, std::shared_ptr<IouAwareNms>>(
      m, "IouAwareNms",
      "IoU-aware NMS (as in IoU-aware RetinaNet): boxes are ranked by score^(1 - alpha) * predicted_iou^alpha, then hard NMS "
      "by IoU runs on that ranking. Needs predicted_ious (one per box, in [0, 1]) and scores >= 0 (probabilities); the "
      "output scores are the ranking scores, the output boxes the input's.")
      .def(py::init([](float alpha, double iou_threshold, bool class_aware, float score_threshold, std::int64_t max_detections) {
             return std::make_shared<IouAwareNms>(IouAwareNmsOptions{
                 alpha, HardNmsOptions{iou_threshold, BoxMetric::IoU, class_aware, score_threshold, max_detections}});
           }),
           py::arg("alpha") = 0.5f, py::arg("iou_threshold") = 0.5, py::arg("class_aware") = true,
           py::arg("score_threshold") = -std::numeric_limits<float>::infinity(), py::arg("max_detections") = kNoLimit,
           "alpha: the weight of the predicted IoU in the ranking, in [0, 1] (default 0.5; 0 ranks by score alone).\n"
           "iou_threshold: a box is suppressed when its IoU with a kept box is > this, in [0, 1] (default 0.5).\n"
           "class_aware: boxes of different labels never suppress each other (default True).\n"
           "score_threshold: boxes whose ranking score is below this are dropped (default -inf: none).\n"
           "max_detections: keep at most this many boxes, -1 for no limit (default).");

  py::class_<WeightedBoxFusion, Suppressor, std::shared_ptr<WeightedBoxFusion>>(
      m, "WeightedBoxFusion",
      "Weighted boxes fusion (Solovyev et al. 2021), for pooled predictions of several models or passes: in decreasing "
      "score, each box joins the cluster of its label whose fused box it overlaps most (IoU > iou_threshold), or starts one. "
      "A fused box is the score-weighted mean of its members; its score the mean member score times "
      "min(members, num_models) / num_models. keep holds each cluster's top-scoring member, clusters by decreasing fused "
      "score. Always class-aware; scores must be >= 0.")
      .def(py::init([](double iou_threshold, double skip_box_threshold, int num_models) {
             return std::make_shared<WeightedBoxFusion>(WeightedBoxFusionOptions{iou_threshold, skip_box_threshold, num_models});
           }),
           py::arg("iou_threshold") = 0.55, py::arg("skip_box_threshold") = 0.0, py::arg("num_models") = 1,
           "iou_threshold: a box joins a cluster when its IoU with the fused box is > this, in [0, 1] (default 0.55).\n"
           "skip_box_threshold: boxes scoring below this take no part, in [0, 1] (default 0).\n"
           "num_models: how many models' (or passes') predictions were pooled, >= 1 (default 1); a cluster found by fewer "
           "loses score in proportion.");

  py::class_<NonMaxMerge, Suppressor, std::shared_ptr<NonMaxMerge>>(
      m, "NonMaxMerge",
      "Non-max merging (as SAHI's NMM): boxes that match are merged into the enclosing box of their group instead of being "
      "dropped; the group keeps the index and score of its top-ranked member. Greedy: a group is a box that hard NMS keeps "
      "and the boxes it suppressed, each joining the highest-ranked kept box it matches. Not greedy: groups are the "
      "connected components of the match relation, so chains of boxes merge too.")
      .def(py::init([](double match_threshold, const std::string& metric, bool greedy, bool class_aware) {
             return std::make_shared<NonMaxMerge>(NonMaxMergeOptions{match_threshold, parse_box_metric(metric), greedy, class_aware});
           }),
           py::arg("match_threshold") = 0.5, py::arg("metric") = "ios", py::arg("greedy") = true, py::arg("class_aware") = true,
           "match_threshold: two boxes match when their overlap is > this, in [0, 1] (default 0.5).\n"
           "metric: the overlap: 'ios' (default: intersection over the smaller box, high for a seam-cut piece inside its whole "
           "box), 'iou', 'giou' or 'diou'.\n"
           "greedy: groups as hard NMS forms them (default True), else connected components.\n"
           "class_aware: only boxes of the same label merge (default True).");

  // --- tiling ---------------------------------------------------------------------------------------
  py::class_<PyTile>(m, "Tile",
                     "One tile of an image, from GridTiler.plan() or GridTiler.tiles(): the region of the image it covers, "
                     "in image pixels, and (from tiles()) its pixels. Detections made on the tile are in tile pixels: add "
                     "(x, y) to map them to the image, or pass the tiles to merge_tile_detections.")
      .def(py::init([](int x, int y, int width, int height, bool whole_image) {
             if (width <= 0 || height <= 0) throw py::value_error(fmt::format("a tile needs a positive size, got {}x{}", width, height));
             return PyTile{Tile{cv::Rect(x, y, width, height), {}, whole_image}, py::none()};
           }),
           py::arg("x"), py::arg("y"), py::arg("width"), py::arg("height"), py::arg("whole_image") = false,
           "A region of an image (pixels), as a Python Tiler's plan() returns them.")
      .def_property_readonly(
          "x", [](const PyTile& t) { return t.tile.region.x; }, "Left edge of the region in the image, in pixels.")
      .def_property_readonly(
          "y", [](const PyTile& t) { return t.tile.region.y; }, "Top edge of the region in the image, in pixels.")
      .def_property_readonly(
          "width", [](const PyTile& t) { return t.tile.region.width; },
          "Width of the region in pixels: the tile width, or the image width for the whole-image tile and where the image "
          "is narrower than a tile.")
      .def_property_readonly(
          "height", [](const PyTile& t) { return t.tile.region.height; },
          "Height of the region in pixels: the tile height, or the image height for the whole-image tile and where the "
          "image is lower than a tile.")
      .def_property_readonly(
          "region",
          [](const PyTile& t) {
            const cv::Rect& r = t.tile.region;
            return py::make_tuple(r.x, r.y, r.width, r.height);
          },
          "The region as (x, y, width, height) in image pixels.")
      .def_property_readonly(
          "whole_image", [](const PyTile& t) { return t.tile.whole_image; },
          "True for the extra tile covering the whole image (GridTiler(whole_image=True)), False for a grid cell.")
      .def_readonly("image", &PyTile::image,
                    "The tile's pixels, a numpy array (H, W[, C]) of the image's dtype: a view of the image, or a copy padded "
                    "to the tile size where the image is smaller than a tile. None for tiles from plan().")
      .def("__repr__", [](const PyTile& t) {
        const cv::Rect& r = t.tile.region;
        return fmt::format("Tile(x={}, y={}, width={}, height={}{})", r.x, r.y, r.width, r.height,
                           t.tile.whole_image ? ", whole_image=True" : "");
      });

  py::class_<Tiler, PyTiler, std::shared_ptr<Tiler>>(
      m, "Tiler",
      "Base class of tilers, which cut an image larger than a detector's input into tiles that it detects at full "
      "resolution. GridTiler is the one bloodcv provides; Pipeline(tiler=...) takes any. Subclass it in Python and "
      "implement plan(image_size) — (width, height) → a list of Tile(x, y, width, height) inside the image — to plug in "
      "your own; bloodcv cuts the tiles itself.")
      .def(py::init<>(), "A tiler to subclass: call super().__init__() from the subclass's __init__.");
  py::class_<GridTiler, Tiler, std::shared_ptr<GridTiler>>(
      m, "GridTiler",
      "A regular grid of full-size, overlapping tiles (YOLT / SAHI style). Steps are the tile size minus the overlap; the "
      "last tile of a row or column is shifted inward to end at the image border, so no tile is cut short. An image smaller "
      "than a tile along an axis gives one tile along it, padded on the right or bottom with pad_value, so that the "
      "detector sees it at the tile's scale.")
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
           py::arg("whole_image") = false, py::arg("pad_value") = 114.0,
           "tile_size: (width, height) of a tile in pixels, both > 0 (default (640, 640)); use the detector's tile_size().\n"
           "overlap: the overlap of neighbouring tiles as a fraction of the tile size, in [0, 1) (default 0.15), rounded "
           "down to whole pixels on each axis.\n"
           "overlap_pixels: the overlap in pixels on both axes instead, in [0, min(tile_size)) (default None: use overlap).\n"
           "whole_image: add one more tile covering the whole image, as SAHI's standard pass, when the grid has more than "
           "one tile (default False).\n"
           "pad_value: the value that fills every channel of the padding of tiles larger than the image (default 114, "
           "YOLO's letterbox grey).\n"
           "Raises ValueError on a tile size or overlap out of range.")
      .def_property_readonly(
          "overlap_pixels", [](const GridTiler& t) { return py::make_tuple(t.overlap().width, t.overlap().height); },
          "The overlap of neighbouring tiles in pixels, as (along x, along y).")
      .def(
          "plan",
          [](const GridTiler& self, std::pair<int, int> image_size) {
            std::vector<PyTile> out;
            for (Tile& t : self.plan({image_size.first, image_size.second})) out.push_back({std::move(t), py::none()});
            return out;
          },
          py::arg("image_size"),
          "The tiles for an image of image_size (width, height) in pixels, without pixels (Tile.image is None): a list of "
          "Tile, row by row, the whole-image tile last. Raises ValueError unless both sizes are > 0.")
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
          py::arg("image"),
          "Cuts image, a numpy array (H, W) or (H, W, C) with 1 to 4 channels, of uint8, uint16 or float32. Returns a list "
          "of Tile, row by row (the whole-image tile last), whose image is a view of the input (a copy of it when its "
          "pixels are not packed within rows: flipped, transposed, sliced), or a copy padded to the tile size where the image is smaller than a tile. Raises ValueError on an "
          "empty or unsupported image, or when padding would make a tile larger than 8192 x 8192 pixels.");

  py::class_<TileMerger, PyTileMerger, std::shared_ptr<TileMerger>>(
      m, "TileMerger",
      "Base class of mergers across tiles: the detections of overlapping tiles → one set in image coordinates, seam "
      "duplicates merged. Subclass it in Python and implement merge(tiles, boxes, scores, labels, image_size) — per tile "
      "the tile-local (N, 4) boxes, (N,) scores and labels, image_size (width, height) — returning a dict of \"boxes\" "
      "(image pixels), \"scores\" and \"labels\"; Pipeline(merger=...) and merge_tile_detections(merger=...) take it.")
      .def(py::init<>(), "A merger to subclass: call super().__init__() from the subclass's __init__.");
  py::class_<SeamMerger, TileMerger, std::shared_ptr<SeamMerger>>(
      m, "SeamMerger",
      "The default merger: detections of different tiles are the same cell when the parts of their boxes inside the two "
      "tiles' shared region overlap (metric > match_threshold), transitively; a group becomes its enclosing box with the "
      "fields of its top-scoring member. Two detections of one tile never merge.")
      .def(py::init([](double match_threshold, const std::string& metric, bool class_aware) {
             return std::make_shared<SeamMerger>(SeamMergeOptions{match_threshold, parse_box_metric(metric), class_aware});
           }),
           py::arg("match_threshold") = 0.5, py::arg("metric") = "iou", py::arg("class_aware") = true,
           "match_threshold in [0, 1]; metric 'iou', 'ios', 'giou' or 'diou' of the parts in the shared region; "
           "class_aware: only detections of the same label merge.");
  py::class_<PooledMerger, TileMerger, std::shared_ptr<PooledMerger>>(
      m, "PooledMerger",
      "All tiles' detections pooled in image coordinates and handed to a Suppressor (as SAHI does with NonMaxMerge and "
      "IoS), whichever tile saw what.")
      .def(py::init([](std::shared_ptr<Suppressor> suppressor) { return std::make_shared<PooledMerger>(suppressor); }),
           py::arg("suppressor"), "suppressor: any strategy of the NMS family (HardNms, SoftNms, NonMaxMerge, ...).");
  m.def(
      "make_merger", [](const std::string& strategy) { return std::const_pointer_cast<TileMerger>(make_merger(strategy)); },
      py::arg("strategy"),
      "A merger by name, as configs and the CLI's --merge name it: 'seam' (SeamMerger), or pooled into 'nmm' "
      "(NonMaxMerge, IoS), 'nms' (HardNms, IoS), 'wbf' (WeightedBoxFusion) or 'soft-nms' (SoftNms). ValueError otherwise.");

  m.def(
      "merge_tile_detections",
      [](const std::vector<PyTile>& tiles, const std::vector<FloatArray>& boxes, const std::vector<FloatArray>& scores,
         const std::optional<std::vector<LabelArray>>& labels, std::pair<int, int> image_size,
         const py::object& merger, double match_threshold, const std::string& metric, bool class_aware) {
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
        const auto chosen = merger_of(merger, SeamMergeOptions{match_threshold, parse_box_metric(metric), class_aware});
        std::vector<Detection> merged;
        {
          py::gil_scoped_release release;
          merged = chosen->merge(per_tile, plain, size);
        }
        return detections_to_dict(merged);
      },
      py::arg("tiles"), py::arg("boxes"), py::arg("scores"), py::arg("labels") = py::none(), py::arg("image_size"),
      py::arg("merger") = py::none(), py::arg("match_threshold") = 0.5, py::arg("metric") = "iou",
      py::arg("class_aware") = true,
      "Tile-local detections (one float32 (N, 4) boxes and (N,) scores[, int64 labels] array per tile, in the order of "
      "tiles) to one set in image coordinates, seam duplicates merged. image_size is (width, height) in pixels. Returns a "
      "dict of numpy 'boxes', 'scores' and 'labels' by decreasing score. bloodcv.merge_tile_detections wraps it for torch "
      "tensors; see its help for the options.");
}

}  // namespace bloodcv::python
