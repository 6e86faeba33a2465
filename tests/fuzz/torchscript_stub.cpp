// The fuzz build has no LibTorch: src/pipeline.cpp names the TorchScript components (make_pipeline), and
// these definitions stand in for src/torchscript.cpp. Loading a model is refused; no fuzz target asks it.
#include <stdexcept>

#include "bloodcv/classifier.hpp"
#include "bloodcv/detector.hpp"

namespace bloodcv {

namespace {

[[noreturn]] void no_libtorch() { throw std::runtime_error("bloodcv's fuzz build has no LibTorch: models cannot be loaded"); }

}  // namespace

struct TorchScriptDetector::Impl {};
TorchScriptDetector::TorchScriptDetector(const std::string&, TorchScriptDetectorOptions) { no_libtorch(); }
TorchScriptDetector::~TorchScriptDetector() = default;
std::vector<std::vector<Detection>> TorchScriptDetector::detect(const std::vector<cv::Mat>&) const { no_libtorch(); }
std::vector<std::string> TorchScriptDetector::labels() const { no_libtorch(); }
cv::Size TorchScriptDetector::input_size() const { no_libtorch(); }
cv::Size TorchScriptDetector::tile_size() const { no_libtorch(); }
std::optional<double> TorchScriptDetector::microns_per_pixel() const { no_libtorch(); }

struct TorchScriptClassifier::Impl {};
TorchScriptClassifier::TorchScriptClassifier(const std::string&, TorchScriptClassifierOptions) { no_libtorch(); }
TorchScriptClassifier::~TorchScriptClassifier() = default;
std::vector<Classification> TorchScriptClassifier::classify(const cv::Mat&, const std::vector<Box>&) const { no_libtorch(); }
std::vector<std::string> TorchScriptClassifier::labels() const { no_libtorch(); }
float TorchScriptClassifier::uncertainty_threshold() const { no_libtorch(); }
const std::string& TorchScriptClassifier::metadata_json() const { no_libtorch(); }

}  // namespace bloodcv
