// Stain normalisers for Python, with a trampoline so that a normaliser written in Python plugs into the
// C++ pipeline.
#include "conversions.hpp"

namespace bloodcv::python {

namespace {

// Lets a Python class implement StainNormalizer: normalize(image) returns the BGR uint8 image, same size.
class PyStainNormalizer : public StainNormalizer {
 public:
  cv::Mat normalize(const cv::Mat& image) const override {
    py::gil_scoped_acquire gil;
    const py::function override = py::get_override(static_cast<const StainNormalizer*>(this), "normalize");
    if (!override) throw std::runtime_error("a Python StainNormalizer must implement normalize(image)");
    const py::object result = override(mat_to_numpy(image));
    const auto out = py::array_t<std::uint8_t, py::array::c_style>::ensure(result);
    if (!out || py::array(result).dtype().kind() != 'u' || out.ndim() != 3 || out.shape(0) != image.rows || out.shape(1) != image.cols ||
        out.shape(2) != 3)
      throw py::value_error(fmt::format("normalize() must return a uint8 BGR image of shape ({}, {}, 3), got {}", image.rows, image.cols,
                                        py::repr(py::hasattr(result, "shape") ? result.attr("shape") : result).cast<std::string>()));
    return mat_view(out).clone();
  }
};

}  // namespace

void bind_stain(py::module_& m) {
  py::class_<StainNormalizer, PyStainNormalizer, std::shared_ptr<StainNormalizer>>(
      m, "StainNormalizer",
      "Base class of stain normalisers: brings a smear imaged elsewhere to the colours a classifier was trained on. "
      "Subclass it in Python and implement normalize(image) to plug your own into Pipeline(stain_normalizer=...).")
      .def(py::init<>(), "A stain normaliser to subclass: call super().__init__() from the subclass's __init__.")
      .def(
          "normalize",
          [](const StainNormalizer& self, const py::array& image) {
            const cv::Mat mat = mat_view(image);
            cv::Mat out;
            {
              py::gil_scoped_release release;
              out = self.normalize(mat);
            }
            return mat_to_numpy(out);
          },
          py::arg("image"), "The image (BGR numpy, uint8 / uint16 / float32 in [0, 1]) in the target's colours: a new uint8 BGR array.");

  py::class_<ReinhardNormalizer, StainNormalizer, std::shared_ptr<ReinhardNormalizer>>(
      m, "ReinhardNormalizer", "Reinhard's colour transfer: each CIE Lab channel moved and scaled to the target's mean and standard deviation.")
      .def(py::init([](std::array<double, 3> mean, std::array<double, 3> std) { return std::make_shared<ReinhardNormalizer>(ReinhardTarget{mean, std}); }),
           py::arg("mean"), py::arg("std"),
           "mean, std: the target's per-channel CIE Lab statistics (L in [0, 100], a and b about [-127, 127]); std positive.")
      .def_static(
          "fit", [](const py::array& image) { return std::make_shared<ReinhardNormalizer>(ReinhardNormalizer::fit(mat_view(image))); },
          py::arg("image"), "A normaliser whose target is this reference image's Lab statistics.")
      .def_property_readonly("mean", [](const ReinhardNormalizer& n) { return n.target().mean; }, "The target's Lab mean.")
      .def_property_readonly("std", [](const ReinhardNormalizer& n) { return n.target().std; }, "The target's Lab standard deviation.");

  py::class_<MacenkoNormalizer, StainNormalizer, std::shared_ptr<MacenkoNormalizer>>(
      m, "MacenkoNormalizer",
      "Macenko's stain normalisation: the two stain colours of an image are estimated in optical density (the plane of its "
      "two main directions, extreme angles at robust percentiles) and each pixel's stain amounts are re-rendered with the "
      "target's stain colours and strengths. A field with too few stained pixels is returned unchanged.")
      .def(py::init([](std::array<std::array<double, 3>, 2> stains, std::array<double, 2> max_concentrations, double background) {
             MacenkoOptions o;
             o.background = background;
             return std::make_shared<MacenkoNormalizer>(MacenkoTarget{stains, max_concentrations}, o);
           }),
           py::arg("stains"), py::arg("max_concentrations"), py::arg("background") = 240.0,
           "stains: two optical-density vectors [r, g, b] (haematoxylin-like first); max_concentrations: the 99th percentile "
           "of each stain's amount; background: the intensity of unstained glass.")
      .def_static(
          "fit", [](const py::array& image) { return std::make_shared<MacenkoNormalizer>(MacenkoNormalizer::fit(mat_view(image))); },
          py::arg("image"), "A normaliser whose target is this reference image's stains (ValueError if it has too few stained pixels).")
      .def_property_readonly("stains", [](const MacenkoNormalizer& n) { return n.target().stains; }, "The target's two unit stain vectors (RGB).")
      .def_property_readonly(
          "max_concentrations", [](const MacenkoNormalizer& n) { return n.target().max_concentrations; }, "The target's stain strengths.");

  m.def("make_stain_normalizer", &make_stain_normalizer, py::arg("method"), py::arg("target_json"),
        "A normaliser from a model file's stain target: method 'reinhard' ({\"mean\", \"std\"}) or 'macenko' "
        "({\"stains\", \"max_concentrations\"}), target as JSON text.");
  m.def(
      "fit_stain_target", [](const std::string& method, const py::array& image) { return fit_stain_target(method, mat_view(image)); },
      py::arg("method"), py::arg("image"), "The stain target of a reference image as JSON text, as model files carry it under \"stain\".");
}

}  // namespace bloodcv::python
