// The one translation unit that includes LibTorch: loading bloodcv model files, preprocessing images
// into tensors, running batches, and handing outputs to the decoders as plain float arrays.
#include <cmath>
#include <filesystem>

#include <opencv2/imgproc.hpp>
#include <ATen/Parallel.h>
#include <torch/script.h>
#include <torch/cuda.h>

#include "bloodcv/classifier.hpp"
#include "bloodcv/decoder.hpp"
#include "bloodcv/detector.hpp"
#include "bloodcv/image.hpp"
#include "check.hpp"
#include "model_metadata.hpp"

namespace bloodcv {

namespace {

using detail::fail_model;
using detail::InputSpec;

constexpr const char* kMetadataFile = "bloodcv.json";

struct LoadedModel {
  std::string path;
  torch::jit::Module module;
  std::string metadata_json;
  detail::ModelMetadata meta;
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
  const cv::Size s = m.meta.input.size;
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
  m.meta = detail::read_model_metadata(path, m.metadata_json, task);
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

}  // namespace

// --- detector --------------------------------------------------------------------------------------
struct TorchScriptDetector::Impl {
  LoadedModel model;
  DecoderSetup decoding;
};

TorchScriptDetector::TorchScriptDetector(const std::string& path, TorchScriptDetectorOptions options)
    : impl_(std::make_unique<Impl>()) {
  if (options.score_threshold) detail::check_unit_interval(*options.score_threshold, "score_threshold");
  if (options.nms_iou_threshold) detail::check_unit_interval(*options.nms_iou_threshold, "nms_iou_threshold");
  impl_->model = load_model(path, options.runtime, "detection");
  impl_->decoding = detail::decoder_for(impl_->model.meta, options.score_threshold, options.nms_iou_threshold);
  if (options.suppressor) impl_->decoding.suppressor = options.suppressor;
}

TorchScriptDetector::~TorchScriptDetector() = default;
TorchScriptDetector::TorchScriptDetector(TorchScriptDetector&&) noexcept = default;
TorchScriptDetector& TorchScriptDetector::operator=(TorchScriptDetector&&) noexcept = default;

std::vector<std::string> TorchScriptDetector::labels() const { return impl_->model.meta.labels; }
cv::Size TorchScriptDetector::input_size() const { return impl_->model.meta.input.size; }
cv::Size TorchScriptDetector::tile_size() const { return impl_->model.meta.tile_size; }
std::optional<double> TorchScriptDetector::microns_per_pixel() const { return impl_->model.meta.microns_per_pixel; }
const std::string& TorchScriptDetector::metadata_json() const { return impl_->model.metadata_json; }
bool TorchScriptDetector::optimized() const { return impl_->model.single_thread.has_value(); }

std::vector<std::vector<Detection>> TorchScriptDetector::detect(const std::vector<cv::Mat>& images) const {
  const LoadedModel& m = impl_->model;
  std::vector<std::vector<Detection>> results;
  results.reserve(images.size());
  for (std::size_t start = 0; start < images.size(); start += static_cast<std::size_t>(m.batch_size)) {
    const std::size_t end = std::min(images.size(), start + static_cast<std::size_t>(m.batch_size));
    std::vector<InputTransform> transforms(end - start);
    const std::vector<torch::Tensor> outputs = forward(m, make_batch(end - start, m.meta.input, [&](std::size_t k) {
      return fit_to_input(to_bgr8(images[start + k], fmt::format("images[{}]", start + k)), m.meta.input, transforms[k]);
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
  float crop_padding = 0.1f;  // the options' or the file's
};

TorchScriptClassifier::TorchScriptClassifier(const std::string& path, TorchScriptClassifierOptions options)
    : impl_(std::make_unique<Impl>()) {
  impl_->model = load_model(path, options.runtime, "classification");
  impl_->crop_padding = options.crop_padding.value_or(impl_->model.meta.crop_padding);
  if (!(impl_->crop_padding >= 0.f && impl_->crop_padding <= 2.f))
    detail::fail_argument("crop_padding must be in [0, 2], got {}", impl_->crop_padding);
}

TorchScriptClassifier::~TorchScriptClassifier() = default;
TorchScriptClassifier::TorchScriptClassifier(TorchScriptClassifier&&) noexcept = default;
TorchScriptClassifier& TorchScriptClassifier::operator=(TorchScriptClassifier&&) noexcept = default;

std::vector<std::string> TorchScriptClassifier::labels() const { return impl_->model.meta.labels; }
float TorchScriptClassifier::uncertainty_threshold() const { return impl_->model.meta.uncertain_below; }
float TorchScriptClassifier::temperature() const { return impl_->model.meta.temperature; }
cv::Size TorchScriptClassifier::input_size() const { return impl_->model.meta.input.size; }
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
  const auto classes = static_cast<std::int64_t>(m.meta.labels.size());
  std::vector<Classification> results;
  results.reserve(boxes.size());
  for (std::size_t start = 0; start < boxes.size(); start += static_cast<std::size_t>(m.batch_size)) {
    const std::size_t end = std::min(boxes.size(), start + static_cast<std::size_t>(m.batch_size));
    const std::vector<torch::Tensor> outputs = forward(m, make_batch(end - start, m.meta.input, [&](std::size_t k) {
      // The box (clipped to the image) with context, at least 1 px a side; what lies outside the image
      // is filled with the pad value.
      const Box b = clip_box(boxes[start + k], frame.x2, frame.y2);
      const float px = std::max(b.width() * impl_->crop_padding, 1.f), py = std::max(b.height() * impl_->crop_padding, 1.f);
      const cv::Rect wanted(cv::Point(static_cast<int>(std::floor(b.x1 - px)), static_cast<int>(std::floor(b.y1 - py))),
                            cv::Point(static_cast<int>(std::ceil(b.x2 + px)), static_cast<int>(std::ceil(b.y2 + py))));
      const cv::Rect inside = wanted & cv::Rect(0, 0, bgr.cols, bgr.rows);
      cv::Mat crop(wanted.size(), CV_8UC3, cv::Scalar::all(m.meta.input.pad_value));
      if (!inside.empty()) bgr(inside).copyTo(crop(inside - wanted.tl()));
      InputTransform unused;
      return fit_to_input(crop, m.meta.input, unused);
    }));
    const torch::Tensor& logits = outputs.front();
    if (outputs.size() != 1 || logits.dim() != 2 || logits.size(1) != classes)
      fail_model(m.path, fmt::format("a classifier must return logits [B, {}] ({} labels), got {} output(s), the first {}", classes,
                                     classes, outputs.size(), dims(logits.sizes())));
    if (!torch::isfinite(logits).all().item<bool>()) fail_model(m.path, "its logits hold NaN or infinite values");
    const torch::Tensor probs = torch::softmax(logits / m.meta.temperature, 1).contiguous();
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
