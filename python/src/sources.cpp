// Image sources and slide analysis for Python: ImageSource is subclassable; a slide is analysed through
// Pipeline.analyze(source) or in stages (plan, detect_tiles, finish) that bloodcv.distributed spreads over
// Dask workers.
#include "conversions.hpp"

namespace bloodcv::python {

namespace {

// Lets a Python class implement ImageSource: levels() → [((width, height), downsample), ...] finest first,
// read((x, y, width, height), level) → uint8 BGR (height, width, 3); optionally microns_per_pixel() and name().
class PyImageSource : public ImageSource {
 public:
  std::vector<SourceLevel> levels() const override {
    py::gil_scoped_acquire gil;
    const py::function override = py::get_override(static_cast<const ImageSource*>(this), "levels");
    if (!override) throw std::runtime_error("a Python ImageSource must implement levels()");
    std::vector<SourceLevel> out;
    for (const py::handle item : override()) {
      const auto pair = py::cast<std::pair<std::pair<int, int>, double>>(item);
      if (pair.first.first <= 0 || pair.first.second <= 0 || !(pair.second >= 1))
        throw py::value_error(fmt::format("levels(): a level is ((width, height), downsample) with positive sizes and downsample >= 1, got "
                                          "(({}, {}), {})", pair.first.first, pair.first.second, pair.second));
      out.push_back({cv::Size(pair.first.first, pair.first.second), pair.second});
    }
    if (out.empty()) throw py::value_error("levels() returned no level");
    return out;
  }
  std::optional<double> microns_per_pixel() const override {
    py::gil_scoped_acquire gil;
    const py::function override = py::get_override(static_cast<const ImageSource*>(this), "microns_per_pixel");
    return override ? py::cast<std::optional<double>>(override()) : std::nullopt;
  }
  cv::Mat read(const cv::Rect& region, int level) const override {
    check_region(*this, region, level);
    py::gil_scoped_acquire gil;
    const py::function override = py::get_override(static_cast<const ImageSource*>(this), "read");
    if (!override) throw std::runtime_error("a Python ImageSource must implement read(region, level)");
    const py::array pixels = py::array::ensure(override(py::make_tuple(region.x, region.y, region.width, region.height), level));
    if (!pixels || pixels.ndim() != 3 || pixels.shape(0) != region.height || pixels.shape(1) != region.width || pixels.shape(2) != 3 ||
        !pixels.dtype().is(py::dtype::of<std::uint8_t>()))
      throw py::value_error(fmt::format("read(): expected uint8 BGR pixels of shape ({}, {}, 3)", region.height, region.width));
    return mat_view(pixels).clone();
  }
  std::string name() const override {
    py::gil_scoped_acquire gil;
    const py::function override = py::get_override(static_cast<const ImageSource*>(this), "name");
    return override ? py::cast<std::string>(override()) : std::string("python source");
  }
};

cv::Rect rect_of(const std::tuple<int, int, int, int>& r) { return {std::get<0>(r), std::get<1>(r), std::get<2>(r), std::get<3>(r)}; }

SlideOptions slide_options(std::optional<double> mpp, bool skip_background, int mask_max_side, std::size_t batch_tiles) {
  SlideOptions o;
  o.microns_per_pixel = mpp;
  o.skip_background = skip_background;
  o.mask_max_side = mask_max_side;
  o.batch_tiles = batch_tiles;
  return o;
}

}  // namespace

void bind_sources(py::module_& m) {
  py::class_<ImageSource, PyImageSource, std::shared_ptr<ImageSource>>(
      m, "ImageSource",
      "Where pixels come from, region by region: an image in memory (MatImageSource), a whole slide (OpenSlideSource), or "
      "your own — subclass it and implement levels() → [((width, height), downsample), ...] (finest first) and "
      "read((x, y, width, height), level) → uint8 BGR (height, width, 3); optionally microns_per_pixel() and name(). "
      "Pipeline.analyze(source) reads it tile by tile.")
      .def(py::init<>(), "A source to subclass: call super().__init__() from the subclass's __init__.")
      .def("levels",
           [](const ImageSource& s) {
             py::list out;
             for (const SourceLevel& l : s.levels()) out.append(py::make_tuple(py::make_tuple(l.size.width, l.size.height), l.downsample));
             return out;
           },
           "The levels, finest first: [((width, height), downsample), ...].")
      .def("microns_per_pixel", &ImageSource::microns_per_pixel, "Microns per level-0 pixel, or None.")
      .def("read",
           [](const ImageSource& s, const std::tuple<int, int, int, int>& region, int level) {
             cv::Mat pixels;
             {
               py::gil_scoped_release release;
               pixels = s.read(rect_of(region), level);
             }
             return mat_to_numpy(pixels);
           },
           py::arg("region"), py::arg("level") = 0,
           "The pixels of region (x, y, width, height) in that level's pixels, as uint8 BGR (height, width, 3). IndexError for a level or "
           "region outside the source; RuntimeError when they cannot be read (a corrupt tile).")
      .def("name", &ImageSource::name, "How messages name the source.")
      .def("size", [](const ImageSource& s) { return py::make_tuple(s.size().width, s.size().height); }, "Level 0's (width, height).");
  py::class_<MatImageSource, ImageSource, std::shared_ptr<MatImageSource>>(m, "MatImageSource", "An image in memory as a one-level source.")
      .def(py::init([](const py::array& image, const std::string& name, std::optional<double> mpp) {
             return std::make_shared<MatImageSource>(mat_view(image), name, mpp);
           }),
           py::arg("image"), py::arg("name") = "image", py::arg("microns_per_pixel") = py::none(),
           "image: a BGR numpy image (uint8, uint16, or float32 in [0, 1]), copied; microns_per_pixel: its scale, if known.");
  py::class_<OpenSlideSource, ImageSource, std::shared_ptr<OpenSlideSource>>(
      m, "OpenSlideSource",
      "A whole slide through OpenSlide (pyramidal or tiled TIFF, SVS, NDPI, MRXS, SCN, ...); microns per pixel from its metadata.")
      .def(py::init<const std::string&>(), py::arg("path"), "RuntimeError naming the path if OpenSlide cannot open it.")
      .def("vendor", &OpenSlideSource::vendor, "OpenSlide's name for the format ('generic-tiff', 'aperio', ...).");
  m.def(
      "draw_slide_overview",
      [](const ImageSource& source, const AnalysisResult& result, int max_side) {
        SlideOverview o;
        {
          py::gil_scoped_release release;
          o = draw_slide_overview(source, result, max_side);
        }
        return py::make_tuple(mat_to_numpy(o.cells), mat_to_numpy(o.density), o.downsample);
      },
      py::arg("source"), py::arg("result"), py::arg("max_side") = 2048,
      "A slide's pictures at a reduced scale: (overview with every cell drawn, cell-density heat map over it, level-0 pixels per pixel).");
  m.def(
      "write_slide_reports",
      [](const ImageSource& source, const AnalysisResult& result, const std::string& out_dir, const std::string& stem, std::int64_t image_id) {
        ReportPaths p;
        {
          py::gil_scoped_release release;
          p = write_slide_reports(source, result, out_dir, stem, image_id);
        }
        return py::dict(py::arg("overview") = p.overlay, py::arg("density") = p.density, py::arg("json") = p.json, py::arg("csv") = p.csv,
                        py::arg("coco") = p.coco);
      },
      py::arg("source"), py::arg("result"), py::arg("out_dir"), py::arg("stem"), py::arg("image_id") = 1,
      "Writes STEM.overview.jpg, STEM.density.jpg, STEM.json, STEM.csv, STEM.coco.json (all or none); returns their paths.");
  m.def("is_slide", &is_slide, py::arg("path"), "True when OpenSlide can read the file as a slide.");
  m.def("open_image_source", [](const std::string& path) { return std::shared_ptr<ImageSource>(open_image_source(path)); }, py::arg("path"),
        "An OpenSlideSource for a slide, else a MatImageSource of the image read whole.");
  m.def(
      "tissue_mask",
      [](const py::array& image, double min_saturation, double max_grey, int close_radius) {
        return mat_to_numpy(tissue_mask(mat_view(image), TissueMaskOptions{min_saturation, max_grey, close_radius}));
      },
      py::arg("image"), py::arg("min_saturation") = 25.0, py::arg("max_grey") = 200.0, py::arg("close_radius") = 1,
      "Where the stain is in a low-resolution BGR view: uint8 (H, W), 255 where a pixel's HSV saturation exceeds min_saturation or its "
      "grey level is below max_grey (gaps closed with a disk of close_radius), 0 for background.");
  m.def(
      "read_overview",
      [](const ImageSource& source, int max_side, double at_least) {
        double down = 1;
        cv::Mat view;
        {
          py::gil_scoped_release release;
          view = read_overview(source, max_side, at_least, &down);
        }
        return py::make_tuple(mat_to_numpy(view), down);
      },
      py::arg("source"), py::arg("max_side") = 2048, py::arg("at_least") = 1.0,
      "The whole source at most max_side pixels a side, read in strips: (BGR image, level-0 pixels per pixel).");

  py::class_<SlidePlan>(m, "SlidePlan",
                        "What Pipeline.analyze(source) does, as data: the tiles (working pixels), which run, the tissue mask and the scale.")
      .def_property_readonly("working_size", [](const SlidePlan& p) { return py::make_tuple(p.working_size.width, p.working_size.height); },
                             "The image the detector sees, (width, height): level 0 divided by info[\"downsample\"].")
      .def_property_readonly(
          "regions",
          [](const SlidePlan& p) {
            py::list out;
            for (const Tile& t : p.tiles) out.append(py::make_tuple(t.region.x, t.region.y, t.region.width, t.region.height));
            return out;
          },
          "The planned tiles' regions (x, y, width, height) in working pixels; detect_tiles and finish index them.")
      .def_property_readonly("run", [](const SlidePlan& p) { return std::vector<bool>(p.run.begin(), p.run.end()); },
                             "Per tile: True where it has tissue and is detected.")
      .def_property_readonly("mask", [](const SlidePlan& p) { return mat_to_numpy(p.mask); }, "The tissue mask, uint8 (H, W).")
      .def_readonly("mask_downsample", &SlidePlan::mask_downsample, "Working pixels per mask pixel.")
      .def_property_readonly("info", [](const SlidePlan& p) { return slide_info_dict(p.info); },
                             "{source, levels, microns_per_pixel, downsample, level, tiles_skipped}.");
}

// Pipeline's slide methods, added to the class bound in runtime.cpp.
void bind_slide_analysis(py::class_<Pipeline, std::shared_ptr<Pipeline>>& pipeline) {
  const char* options_doc =
      "microns_per_pixel: of the source's level 0, overriding its own; skip_background: tiles with no tissue in the low-resolution "
      "mask are not run; mask_max_side: the mask's longest side; batch_tiles: tiles read and detected together.";
  pipeline
      .def(
          "analyze_source",
          [](const Pipeline& self, const ImageSource& source, std::optional<double> mpp, bool skip_background, int mask_max_side,
             std::size_t batch_tiles) {
            py::gil_scoped_release release;
            return self.analyze(source, slide_options(mpp, skip_background, mask_max_side, batch_tiles));
          },
          py::arg("source"), py::kw_only(), py::arg("microns_per_pixel") = py::none(), py::arg("skip_background") = true,
          py::arg("mask_max_side") = 4096, py::arg("batch_tiles") = 8,
          (std::string("Analyses an ImageSource tile by tile (memory does not grow with its size); boxes in level-0 pixels. ") + options_doc).c_str())
      .def(
          "plan",
          [](const Pipeline& self, const ImageSource& source, std::optional<double> mpp, bool skip_background, int mask_max_side) {
            py::gil_scoped_release release;
            return self.plan(source, slide_options(mpp, skip_background, mask_max_side, 8));
          },
          py::arg("source"), py::kw_only(), py::arg("microns_per_pixel") = py::none(), py::arg("skip_background") = true,
          py::arg("mask_max_side") = 4096, "The SlidePlan analyze_source would follow (same options).")
      .def(
          "detect_tiles",
          [](const Pipeline& self, const ImageSource& source, const SlidePlan& plan, const std::vector<std::size_t>& tiles) {
            std::vector<std::vector<Detection>> found;
            {
              py::gil_scoped_release release;
              found = self.detect_tiles(source, plan, tiles);
            }
            py::list out;
            for (const auto& d : found) out.append(detections_to_dict(d));
            return out;
          },
          py::arg("source"), py::arg("plan"), py::arg("tiles"),
          "The tile-local detections of the listed plan tiles: one dict of \"boxes\", \"scores\", \"labels\" (and \"predicted_ious\") each.")
      .def(
          "finish",
          [](const Pipeline& self, const ImageSource& source, const SlidePlan& plan, const py::list& per_tile) {
            std::vector<std::vector<Detection>> dets;
            for (const py::handle item : per_tile) dets.push_back(item.is_none() ? std::vector<Detection>{} : detections_from_dict(py::cast<py::dict>(item), "per_tile"));
            py::gil_scoped_release release;
            return self.finish(source, plan, dets);
          },
          py::arg("source"), py::arg("plan"), py::arg("per_tile"),
          "Merges one detection dict per plan tile (None for a skipped one), classifies and counts: the AnalysisResult analyze_source gives.");
}

}  // namespace bloodcv::python
