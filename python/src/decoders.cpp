// Output decoders for Python: a decoder written in Python is registered by kind (register_decoder), so a
// model file whose decoder entry names that kind is decoded by it inside TorchScriptDetector.
#include "conversions.hpp"

namespace bloodcv::python {

namespace {

// Lets a Python class implement OutputDecoder: decode(outputs) gets one image's outputs as a list of
// float32 numpy arrays and returns its candidates: {"boxes" (N, 4) in model-input pixels, "scores",
// "labels"[, "predicted_ious"]}.
class PyOutputDecoder : public OutputDecoder {
 public:
  std::vector<Detection> decode(const std::vector<TensorView>& outputs) const override {
    py::gil_scoped_acquire gil;
    const py::function override = py::get_override(static_cast<const OutputDecoder*>(this), "decode");
    if (!override) throw std::runtime_error("a Python OutputDecoder must implement decode(outputs)");
    py::list arrays;
    for (const TensorView& t : outputs) {
      std::vector<py::ssize_t> shape(t.shape.begin(), t.shape.end());
      py::array_t<float> a(shape);
      std::copy(t.data, t.data + t.numel(), a.mutable_data());
      arrays.append(a);
    }
    const py::object result = override(arrays);
    if (!py::isinstance<py::dict>(result))
      throw py::value_error("decode() must return a dict with \"boxes\" and \"scores\" (and \"labels\", \"predicted_ious\")");
    return detections_from_dict(py::cast<py::dict>(result), "decode()");
  }
};

}  // namespace

void bind_decoders(py::module_& m) {
  py::class_<OutputDecoder, PyOutputDecoder, std::shared_ptr<OutputDecoder>>(
      m, "OutputDecoder",
      "Base class of output decoders: one image's raw model outputs → candidate detections (suppression comes after, "
      "by the Suppressor the model file's decoder entry names). Subclass it in Python, implement decode(outputs) — a list "
      "of float32 numpy arrays, the model's outputs for one image without the batch dimension — returning {\"boxes\" (N, 4) "
      "in model-input pixels, \"scores\", \"labels\"[, \"predicted_ious\"]}, and register a factory for it with "
      "register_decoder.")
      .def(py::init<>(), "A decoder to subclass: call super().__init__() from the subclass's __init__.");

  m.def(
      "register_decoder",
      [](const std::string& kind, py::function factory) {
        // The registry is a C++ static that outlives the interpreter: it holds the factory through a
        // reference that is never released, so that nothing touches Python after it has finalized.
        const auto* held = new py::function(std::move(factory));
        register_decoder(kind, [held](const std::string& entry, const DecoderContext& context) {
          py::gil_scoped_acquire gil;
          const py::object made = (*held)(py::module_::import("json").attr("loads")(entry), context.num_classes,
                                          py::make_tuple(context.input_size.width, context.input_size.height));
          const py::tuple pair = py::cast<py::tuple>(made);
          if (pair.size() != 2) throw py::value_error("a decoder factory must return (decoder, suppressor)");
          // The Python objects live as long as the detector that holds them.
          auto decoder = pair[0].cast<std::shared_ptr<OutputDecoder>>();
          auto suppressor = pair[1].cast<std::shared_ptr<Suppressor>>();
          struct Holder : OutputDecoder {
            std::shared_ptr<OutputDecoder> inner;
            py::object keep;
            std::vector<Detection> decode(const std::vector<TensorView>& outputs) const override { return inner->decode(outputs); }
            ~Holder() override {
              py::gil_scoped_acquire gil;
              keep = py::object();
            }
          };
          auto holder = std::make_unique<Holder>();
          holder->inner = decoder;
          holder->keep = pair[0];
          return DecoderSetup{std::move(holder), suppressor};
        });
      },
      py::arg("kind"), py::arg("factory"),
      "Registers a decoder kind: factory(entry: dict, num_classes: int, input_size: (w, h)) returns (decoder, suppressor), "
      "an OutputDecoder and a Suppressor. A model file whose decoder entry has this kind is then decoded by it.");
  m.def("decoder_kinds", &decoder_kinds, "The registered decoder kinds (\"anchor\", \"yolov5\", and those registered since).");
}

}  // namespace bloodcv::python
