// The one translation unit that includes LibTorch: loading bloodcv model files, preprocessing images
// into tensors, running batches, and handing outputs to the decoders as plain float arrays.
#include <cmath>
#include <filesystem>

#include <nlohmann/json.hpp>
#include <opencv2/imgproc.hpp>
#include <ATen/Parallel.h>
#include <torch/script.h>
#include <torch/cuda.h>

#include "bloodcv/classifier.hpp"
#include "bloodcv/decoder.hpp"
#include "bloodcv/detector.hpp"
#include "bloodcv/image.hpp"
#include "bloodcv/stain.hpp"
#include "check.hpp"

namespace bloodcv {

using json = nlohmann::json;

namespace {

constexpr const char* kMetadataFile = "bloodcv.json";

// How the model wants its input tensor (docs/model_format.md, "input").
struct InputSpec {
  cv::Size size;
  bool rgb = true;
  float scale = 1.f / 255.f;
  std::array<float, 3> mean{0, 0, 0}, std{1, 1, 1};
  bool letterbox = true;
  float pad_value = 114.f;

  InputTransform transform_for(cv::Size image) const {
    return letterbox ? letterbox_transform(image, size) : stretch_transform(image, size);
  }
};

struct LoadedModel {
  std::string path;
  torch::jit::Module module;
  std::string metadata_json;
  json meta;
  std::vector<std::string> labels;
  InputSpec input;
  torch::Device device{torch::kCPU};
  torch::ScalarType dtype = torch::kFloat32;  // RuntimeOptions::precision
  int batch_size = 8;
  // The module frozen and optimised (RuntimeOptions::optimize), run when LibTorch has one intra-op thread.
  // On several, the module as loaded runs: fed NHWC input, its convolutions take oneDNN's multi-threaded path
  // and beat the optimised graph (`benchmarks/run.py forward`: the bundled detector on 2 threads, 51 against
  // 86 ms a batch; on one, 176 against 144).
  std::optional<torch::jit::Module> single_thread;
};

std::string dims(c10::IntArrayRef sizes) {
  std::string s = "[";
  for (std::size_t i = 0; i < sizes.size(); ++i) s += (i ? ", " : "") + std::to_string(sizes[i]);
  return s + "]";
}

[[noreturn]] void fail_model(const std::string& path, const std::string& what) {
  throw std::runtime_error(fmt::format("model file '{}': {}", path, what));
}

template <class T>
T value_or(const json& object, const char* key, T fallback) {
  return object.contains(key) ? object.at(key).get<T>() : fallback;
}

torch::Device parse_device(const std::string& device) {
  try {
    torch::Device d(device);
    if (d.is_cuda() && !torch::cuda::is_available())
      throw std::runtime_error(fmt::format("device '{}' was asked for, but CUDA is not available here", device));
    if (!d.is_cpu() && !d.is_cuda()) throw std::runtime_error(fmt::format("device '{}' is not supported (cpu, cuda, cuda:N)", device));
    return d;
  } catch (const c10::Error&) {
    throw std::invalid_argument(fmt::format("device must be cpu, cuda or cuda:N, got '{}'", device));
  }
}

torch::ScalarType parse_precision(const std::string& precision) {
  if (precision == "float32") return torch::kFloat32;
  if (precision == "float16") return torch::kHalf;
  if (precision == "bfloat16") return torch::kBFloat16;
  detail::fail_argument("precision must be float32, float16 or bfloat16, got '{}'", precision);
}

std::vector<torch::Tensor> forward(const LoadedModel& m, torch::Tensor batch);

// Freezes the module and applies optimize_for_inference; keeps the result only if, on a fixed input of two
// images, every output equals the original's to 1e-4 (relative 1e-3). Any failure keeps the original alone.
std::optional<torch::jit::Module> optimize(const LoadedModel& m) {
  const cv::Size s = m.input.size;
  const torch::Tensor probe = (torch::arange(2 * 3 * s.height * s.width, torch::kFloat32).remainder(251.f) / 251.f).reshape({2, 3, s.height, s.width});
  try {
    LoadedModel candidate = m;
    {
      torch::NoGradGuard no_grad;
      candidate.module = torch::jit::optimize_for_inference(candidate.module);
    }
    const auto before = forward(m, probe), after = forward(candidate, probe);
    if (before.size() != after.size()) return std::nullopt;
    for (std::size_t k = 0; k < before.size(); ++k)
      if (!torch::allclose(before[k], after[k], 1e-3, 1e-4)) return std::nullopt;
    return candidate.module;
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

LoadedModel load_model(const std::string& path, const RuntimeOptions& runtime, const std::string& task) {
  if (runtime.batch_size < 1) detail::fail_argument("batch_size must be >= 1, got {}", runtime.batch_size);
  if (runtime.threads < 0) detail::fail_argument("threads must be >= 0 (0: as they are), got {}", runtime.threads);
  if (runtime.threads > 0) at::set_num_threads(runtime.threads);
  LoadedModel m;
  m.path = path;
  m.device = parse_device(runtime.device);
  m.dtype = parse_precision(runtime.precision);
  m.batch_size = runtime.batch_size;
  if (m.dtype == torch::kHalf && !m.device.is_cuda()) detail::fail_argument("precision float16 needs a CUDA device, got '{}'", runtime.device);

  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) fail_model(path, "no such file");
  torch::jit::ExtraFilesMap extra{{kMetadataFile, ""}};
  try {
    m.module = torch::jit::load(path, m.device, extra);
  } catch (const c10::Error& e) {
    fail_model(path, fmt::format("not a readable TorchScript archive ({})", e.what_without_backtrace()));
  }
  m.metadata_json = extra[kMetadataFile];
  if (m.metadata_json.empty())
    fail_model(path, fmt::format("no {} inside: export it with bloodcv.export.export_model (docs/model_format.md)", kMetadataFile));
  try {
    m.meta = json::parse(m.metadata_json);
    if (m.meta.value("format", "") != "bloodcv-model") fail_model(path, "bloodcv.json: format must be 'bloodcv-model'");
    if (m.meta.at("task").get<std::string>() != task)
      fail_model(path, fmt::format("bloodcv.json: task is '{}', but a {} model is needed", m.meta.at("task").get<std::string>(), task));
    m.labels = m.meta.at("labels").get<std::vector<std::string>>();
    if (m.labels.empty()) fail_model(path, "bloodcv.json: labels is empty");
    const auto size = m.meta.at("input_size").get<std::vector<int>>();
    if (size.size() != 2 || size[0] <= 0 || size[1] <= 0) fail_model(path, "bloodcv.json: input_size must be [width, height] > 0");
    m.input.size = {size[0], size[1]};
    const json input = m.meta.value("input", json::object());
    const std::string color = value_or<std::string>(input, "color", "rgb");
    if (color != "rgb" && color != "bgr") fail_model(path, fmt::format("bloodcv.json: input.color must be rgb or bgr, got '{}'", color));
    m.input.rgb = color == "rgb";
    m.input.scale = value_or<float>(input, "scale", 1.f / 255.f);
    m.input.mean = value_or<std::array<float, 3>>(input, "mean", {0, 0, 0});
    m.input.std = value_or<std::array<float, 3>>(input, "std", {1, 1, 1});
    for (const float s : m.input.std)
      if (!(s > 0)) fail_model(path, fmt::format("bloodcv.json: input.std must be positive, got {}", s));
    const std::string resize = value_or<std::string>(input, "resize", task == "detection" ? "letterbox" : "stretch");
    if (resize != "letterbox" && resize != "stretch")
      fail_model(path, fmt::format("bloodcv.json: input.resize must be letterbox or stretch, got '{}'", resize));
    m.input.letterbox = resize == "letterbox";
    m.input.pad_value = value_or<float>(input, "pad_value", 114.f);
  } catch (const json::exception& e) {
    fail_model(path, fmt::format("bloodcv.json: {}", e.what()));
  }
  m.module.eval();
  if (m.dtype != torch::kFloat32) m.module.to(m.dtype);
  // bfloat16 gains nothing from it (measured); CUDA has no such pass.
  if (runtime.optimize && m.device.is_cpu() && m.dtype == torch::kFloat32) m.single_thread = optimize(m);
  return m;
}

// Resizes an 8-bit BGR image into the model's input size as the model file says.
cv::Mat fit_to_input(const cv::Mat& bgr, const InputSpec& spec, InputTransform& transform) {
  transform = spec.transform_for(bgr.size());
  const cv::Size scaled(static_cast<int>(std::lround(bgr.cols * transform.scale_x)), static_cast<int>(std::lround(bgr.rows * transform.scale_y)));
  cv::Mat resized;
  if (scaled == bgr.size())
    resized = bgr;
  else
    cv::resize(bgr, resized, scaled, 0, 0, cv::INTER_LINEAR);
  if (resized.size() == spec.size) return resized;
  const int left = static_cast<int>(transform.pad_x), top = static_cast<int>(transform.pad_y);
  cv::Mat padded;
  cv::copyMakeBorder(resized, padded, top, spec.size.height - scaled.height - top, left, spec.size.width - scaled.width - left,
                     cv::BORDER_CONSTANT, cv::Scalar::all(spec.pad_value));
  return padded;
}

// The normalised [n, 3, H, W] batch of the input-size 8-bit BGR images fit(0), ..., fit(n - 1), in
// channels-last memory (NHWC: LibTorch's CPU convolutions run faster on it than on NCHW; the bundled
// detector 1.05x on one thread, 1.77x on two, `benchmarks/run.py forward`), each image written in place. The images are made in parallel on
// LibTorch's intra-op threads, the forward pass's own: on every core, a second pool would take turns with them.
template <class Fit>
torch::Tensor make_batch(std::size_t n, const InputSpec& spec, const Fit& fit) {
  const int h = spec.size.height, w = spec.size.width;
  torch::Tensor nhwc = torch::empty({static_cast<std::int64_t>(n), h, w, 3}, torch::kFloat32);
  float* data = nhwc.data_ptr<float>();
  cv::Scalar alpha, beta;
  for (int c = 0; c < 3; ++c) {  // per channel of the model's order: x * scale / std - mean / std
    alpha[c] = spec.scale / spec.std[static_cast<std::size_t>(c)];
    beta[c] = -spec.mean[static_cast<std::size_t>(c)] / spec.std[static_cast<std::size_t>(c)];
  }
  at::parallel_for(0, static_cast<std::int64_t>(n), 1, [&](std::int64_t begin, std::int64_t end) {
    for (auto i = static_cast<std::size_t>(begin); i < static_cast<std::size_t>(end); ++i) {
      cv::Mat fitted = fit(i);
      if (spec.rgb) {  // into a new image: fitted may share the caller's pixels
        cv::Mat rgb;
        cv::cvtColor(fitted, rgb, cv::COLOR_BGR2RGB);
        fitted = rgb;
      }
      cv::Mat out(h, w, CV_32FC3, data + i * static_cast<std::size_t>(h) * static_cast<std::size_t>(w) * 3);
      fitted.convertTo(out, CV_32F);
      cv::multiply(out, alpha, out);
      cv::add(out, beta, out);
    }
  });
  return nhwc.permute({0, 3, 1, 2});
}

// Runs a batch and returns its outputs as contiguous float32 CPU tensors, batch dimension first.
std::vector<torch::Tensor> forward(const LoadedModel& m, torch::Tensor batch) {
  c10::InferenceMode inference;
  batch = batch.to(m.device, m.dtype);
  // A handle to the same module: forward does not change it.
  torch::jit::Module module = m.single_thread && at::get_num_threads() == 1 ? *m.single_thread : m.module;
  torch::jit::IValue result;
  try {
    result = module.forward({batch});
  } catch (const c10::Error& e) {
    fail_model(m.path, fmt::format("forward failed on a batch {}: {}", dims(batch.sizes()), e.what_without_backtrace()));
  }
  std::vector<torch::jit::IValue> items;
  if (result.isTensor()) {
    items.push_back(result);
  } else if (result.isTuple()) {
    for (const auto& v : result.toTuple()->elements()) items.push_back(v);
  } else if (result.isList()) {
    for (const auto& v : result.toList()) items.push_back(v);
  } else {
    fail_model(m.path, fmt::format("output must be a tensor or a tuple of tensors, got {}", result.tagKind()));
  }
  std::vector<torch::Tensor> outputs;
  for (std::size_t k = 0; k < items.size(); ++k) {
    if (!items[k].isTensor()) fail_model(m.path, fmt::format("output {} is a {}, not a tensor", k, items[k].tagKind()));
    torch::Tensor t = items[k].toTensor().to(torch::kCPU, torch::kFloat32).contiguous();
    if (t.dim() < 1 || t.size(0) != batch.size(0))
      fail_model(m.path, fmt::format("output {} has shape {}; its first dimension must be the batch ({})", k, dims(t.sizes()), batch.size(0)));
    outputs.push_back(t);
  }
  return outputs;
}

// Image `i`'s slice of each output, as the decoders read it.
std::vector<TensorView> views_of(const std::vector<torch::Tensor>& outputs, std::int64_t i) {
  std::vector<TensorView> views;
  for (const torch::Tensor& t : outputs) {
    TensorView v;
    v.data = t.data_ptr<float>() + i * t.stride(0);
    v.shape.assign(t.sizes().begin() + 1, t.sizes().end());
    views.push_back(std::move(v));
  }
  return views;
}

// The model file's decoder entry, with the detector options' thresholds in place of its own.
DecoderSetup decoder_of(const LoadedModel& m, const TorchScriptDetectorOptions& options) {
  if (!m.meta.contains("decoder") || !m.meta.at("decoder").is_object()) fail_model(m.path, "bloodcv.json: no decoder entry");
  json entry = m.meta.at("decoder");
  if (options.score_threshold) entry["score_threshold"] = *options.score_threshold;
  if (options.nms_iou_threshold) entry["nms_iou_threshold"] = *options.nms_iou_threshold;
  try {
    DecoderSetup setup = make_decoder(entry.dump(), DecoderContext{m.labels.size(), m.input.size});
    if (options.suppressor) setup.suppressor = options.suppressor;
    return setup;
  } catch (const std::invalid_argument& e) {
    fail_model(m.path, fmt::format("bloodcv.json: {}", e.what()));
  }
}

// "stain": {"default": method, "reinhard": target, "macenko": target}: refused at load when malformed, so
// that a pipeline never meets it half-way through a run.
void check_stain_metadata(const LoadedModel& m) {
  if (!m.meta.contains("stain")) return;
  const json& stain = m.meta.at("stain");
  if (!stain.is_object()) fail_model(m.path, "bloodcv.json: stain must be an object");
  for (const auto& [key, value] : stain.items()) {
    if (key == "default") {
      if (!value.is_string() || (value != "none" && value != "reinhard" && value != "macenko"))
        fail_model(m.path, "bloodcv.json: stain.default must be none, reinhard or macenko");
      if (value != "none" && !stain.contains(value.get<std::string>()))
        fail_model(m.path, fmt::format("bloodcv.json: stain.default is {}, but stain.{} is missing", value.get<std::string>(),
                                       value.get<std::string>()));
      continue;
    }
    try {
      make_stain_normalizer(key, value.dump());
    } catch (const std::invalid_argument& e) {
      fail_model(m.path, fmt::format("bloodcv.json: stain.{}: {}", key, e.what()));
    }
  }
}

}  // namespace

// --- detector --------------------------------------------------------------------------------------
struct TorchScriptDetector::Impl {
  LoadedModel model;
  DecoderSetup decoding;
  cv::Size tile_size;
  std::optional<double> microns_per_pixel;
};

TorchScriptDetector::TorchScriptDetector(const std::string& path, TorchScriptDetectorOptions options)
    : impl_(std::make_unique<Impl>()) {
  if (options.score_threshold) detail::check_unit_interval(*options.score_threshold, "score_threshold");
  if (options.nms_iou_threshold) detail::check_unit_interval(*options.nms_iou_threshold, "nms_iou_threshold");
  impl_->model = load_model(path, options.runtime, "detection");
  impl_->decoding = decoder_of(impl_->model, options);
  impl_->tile_size = impl_->model.input.size;
  if (impl_->model.meta.contains("tile_size")) {
    const auto t = impl_->model.meta.at("tile_size").get<std::vector<int>>();
    if (t.size() != 2 || t[0] <= 0 || t[1] <= 0) fail_model(path, "bloodcv.json: tile_size must be [width, height] > 0");
    impl_->tile_size = {t[0], t[1]};
  }
  if (impl_->model.meta.contains("microns_per_pixel")) {
    const auto& m = impl_->model.meta.at("microns_per_pixel");
    if (!m.is_number() || !(m.get<double>() > 0)) fail_model(path, "bloodcv.json: microns_per_pixel must be a positive number");
    impl_->microns_per_pixel = m.get<double>();
  }
}

TorchScriptDetector::~TorchScriptDetector() = default;
TorchScriptDetector::TorchScriptDetector(TorchScriptDetector&&) noexcept = default;
TorchScriptDetector& TorchScriptDetector::operator=(TorchScriptDetector&&) noexcept = default;

std::vector<std::string> TorchScriptDetector::labels() const { return impl_->model.labels; }
cv::Size TorchScriptDetector::input_size() const { return impl_->model.input.size; }
cv::Size TorchScriptDetector::tile_size() const { return impl_->tile_size; }
std::optional<double> TorchScriptDetector::microns_per_pixel() const { return impl_->microns_per_pixel; }
const std::string& TorchScriptDetector::metadata_json() const { return impl_->model.metadata_json; }
bool TorchScriptDetector::optimized() const { return impl_->model.single_thread.has_value(); }

std::vector<std::vector<Detection>> TorchScriptDetector::detect(const std::vector<cv::Mat>& images) const {
  const LoadedModel& m = impl_->model;
  std::vector<std::vector<Detection>> results;
  results.reserve(images.size());
  for (std::size_t start = 0; start < images.size(); start += static_cast<std::size_t>(m.batch_size)) {
    const std::size_t end = std::min(images.size(), start + static_cast<std::size_t>(m.batch_size));
    std::vector<InputTransform> transforms(end - start);
    const std::vector<torch::Tensor> outputs = forward(m, make_batch(end - start, m.input, [&](std::size_t k) {
      return fit_to_input(to_bgr8(images[start + k], fmt::format("images[{}]", start + k)), m.input, transforms[k]);
    }));
    // Decoding and suppression, image by image on the same threads.
    results.resize(end);
    at::parallel_for(static_cast<std::int64_t>(start), static_cast<std::int64_t>(end), 1, [&](std::int64_t begin, std::int64_t stop) {
      for (auto i = static_cast<std::size_t>(begin); i < static_cast<std::size_t>(stop); ++i) {
        std::vector<Detection> candidates;
        try {
          candidates = impl_->decoding.decoder->decode(views_of(outputs, static_cast<std::int64_t>(i - start)));
        } catch (const std::invalid_argument& e) {
          fail_model(m.path, fmt::format("its output does not fit its decoder: {}", e.what()));
        }
        std::vector<Detection> dets = suppress(*impl_->decoding.suppressor, candidates);
        const auto w = static_cast<float>(images[i].cols), h = static_cast<float>(images[i].rows);
        for (Detection& d : dets) d.box = clip_box(transforms[i - start].to_image(d.box), w, h);
        results[i] = std::move(dets);
      }
    });
  }
  return results;
}

// --- classifier ------------------------------------------------------------------------------------
struct TorchScriptClassifier::Impl {
  LoadedModel model;
  float crop_padding = 0.1f;
  float temperature = 1.f;      // logits are divided by it before the softmax (calibration)
  float uncertain_below = 0.f;  // top probabilities below it are not to be trusted
};

TorchScriptClassifier::TorchScriptClassifier(const std::string& path, TorchScriptClassifierOptions options)
    : impl_(std::make_unique<Impl>()) {
  impl_->model = load_model(path, options.runtime, "classification");
  impl_->crop_padding = options.crop_padding.value_or(value_or<float>(impl_->model.meta, "crop_padding", 0.1f));
  if (!(impl_->crop_padding >= 0.f && impl_->crop_padding <= 2.f))
    detail::fail_argument("crop_padding must be in [0, 2], got {}", impl_->crop_padding);
  check_stain_metadata(impl_->model);
  const LoadedModel& m = impl_->model;
  if (m.meta.contains("calibration")) {
    try {
      const json& c = m.meta.at("calibration");
      if (!c.is_object()) fail_model(path, "bloodcv.json: calibration must be an object");
      for (const auto& [key, value] : c.items())
        if (key != "temperature" && key != "uncertain_below" && key != "method" && key != "ece")
          fail_model(path, fmt::format("bloodcv.json: calibration.{} is not a known key", key));
      impl_->temperature = value_or<float>(c, "temperature", 1.f);
      impl_->uncertain_below = value_or<float>(c, "uncertain_below", 0.f);
    } catch (const json::exception& e) {
      fail_model(path, fmt::format("bloodcv.json: calibration: {}", e.what()));
    }
    if (!(impl_->temperature > 0.f && std::isfinite(impl_->temperature)))
      fail_model(path, fmt::format("bloodcv.json: calibration.temperature must be positive, got {}", impl_->temperature));
    if (!(impl_->uncertain_below >= 0.f && impl_->uncertain_below <= 1.f))
      fail_model(path, fmt::format("bloodcv.json: calibration.uncertain_below must be in [0, 1], got {}", impl_->uncertain_below));
  }
}

TorchScriptClassifier::~TorchScriptClassifier() = default;
TorchScriptClassifier::TorchScriptClassifier(TorchScriptClassifier&&) noexcept = default;
TorchScriptClassifier& TorchScriptClassifier::operator=(TorchScriptClassifier&&) noexcept = default;

std::vector<std::string> TorchScriptClassifier::labels() const { return impl_->model.labels; }
float TorchScriptClassifier::uncertainty_threshold() const { return impl_->uncertain_below; }
float TorchScriptClassifier::temperature() const { return impl_->temperature; }
cv::Size TorchScriptClassifier::input_size() const { return impl_->model.input.size; }
const std::string& TorchScriptClassifier::metadata_json() const { return impl_->model.metadata_json; }
bool TorchScriptClassifier::optimized() const { return impl_->model.single_thread.has_value(); }

std::vector<Classification> TorchScriptClassifier::classify(const cv::Mat& image, const std::vector<Box>& boxes) const {
  const LoadedModel& m = impl_->model;
  const cv::Mat bgr = to_bgr8(image, "image");
  validate_boxes(boxes, "boxes");
  const Box frame{0.f, 0.f, static_cast<float>(bgr.cols), static_cast<float>(bgr.rows)};
  for (std::size_t i = 0; i < boxes.size(); ++i) {
    const Box& b = boxes[i];
    if (!(b.width() > 0.f && b.height() > 0.f) || intersection(b, frame) <= 0.f)
      detail::fail_argument("boxes[{}] = [{}, {}, {}, {}] has no area inside the {}x{} image", i, b.x1, b.y1, b.x2, b.y2, bgr.cols, bgr.rows);
  }
  const auto classes = static_cast<std::int64_t>(m.labels.size());
  std::vector<Classification> results;
  results.reserve(boxes.size());
  for (std::size_t start = 0; start < boxes.size(); start += static_cast<std::size_t>(m.batch_size)) {
    const std::size_t end = std::min(boxes.size(), start + static_cast<std::size_t>(m.batch_size));
    const std::vector<torch::Tensor> outputs = forward(m, make_batch(end - start, m.input, [&](std::size_t k) {
      // The box (clipped to the image) with context, at least 1 px a side; what lies outside the image
      // is filled with the pad value.
      const Box b = clip_box(boxes[start + k], frame.x2, frame.y2);
      const float px = std::max(b.width() * impl_->crop_padding, 1.f), py = std::max(b.height() * impl_->crop_padding, 1.f);
      const cv::Rect wanted(cv::Point(static_cast<int>(std::floor(b.x1 - px)), static_cast<int>(std::floor(b.y1 - py))),
                            cv::Point(static_cast<int>(std::ceil(b.x2 + px)), static_cast<int>(std::ceil(b.y2 + py))));
      const cv::Rect inside = wanted & cv::Rect(0, 0, bgr.cols, bgr.rows);
      cv::Mat crop(wanted.size(), CV_8UC3, cv::Scalar::all(m.input.pad_value));
      if (!inside.empty()) bgr(inside).copyTo(crop(inside - wanted.tl()));
      InputTransform unused;
      return fit_to_input(crop, m.input, unused);
    }));
    const torch::Tensor& logits = outputs.front();
    if (outputs.size() != 1 || logits.dim() != 2 || logits.size(1) != classes)
      fail_model(m.path, fmt::format("a classifier must return logits [B, {}] ({} labels), got {} output(s), the first {}", classes,
                                     classes, outputs.size(), dims(logits.sizes())));
    if (!torch::isfinite(logits).all().item<bool>()) fail_model(m.path, "its logits hold NaN or infinite values");
    const torch::Tensor probs = torch::softmax(logits / impl_->temperature, 1).contiguous();
    for (std::int64_t i = 0; i < probs.size(0); ++i) {
      const float* p = probs.data_ptr<float>() + i * classes;
      Classification c;
      c.probabilities.assign(p, p + classes);
      c.label = std::max_element(p, p + classes) - p;
      c.score = p[c.label];
      results.push_back(std::move(c));
    }
  }
  return results;
}

}  // namespace bloodcv
