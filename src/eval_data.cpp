// Reading ground truth (Pascal VOC, YOLO, COCO) and predictions (bloodcv reports, COCO results).
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <string>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>
#include <pugixml.hpp>

#include "bloodcv/eval.hpp"
#include "bloodcv/image.hpp"

#include "json_checks.hpp"

namespace bloodcv::eval {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

[[noreturn]] void fail_file(const fs::path& path, const std::string& what) {
  throw std::runtime_error(fmt::format("'{}': {}", path.string(), what));
}

std::vector<fs::path> files_with(const fs::path& path, const std::string& extension) {
  if (fs::is_regular_file(path)) return {path};
  if (!fs::is_directory(path)) fail_file(path, "no such file or directory");
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(path))
    if (e.is_regular_file() && e.path().extension() == extension) files.push_back(e.path());
  std::sort(files.begin(), files.end());
  if (files.empty()) fail_file(path, fmt::format("no {} files", extension));
  return files;
}

// A VOC <bndbox> coordinate: the whole text a number (pugixml's as_double reads "abc" as 0).
double voc_coordinate(const pugi::xml_node& bndbox, const char* tag, const std::string& object, const fs::path& file) {
  std::string text = bndbox.child_value(tag);
  text.erase(0, text.find_first_not_of(" \t\r\n"));
  text.erase(text.find_last_not_of(" \t\r\n") + 1);
  std::size_t used = 0;
  double value = 0;
  try {
    value = std::stod(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (text.empty() || used != text.size())
    fail_file(file, fmt::format("object '{}': <{}> must be a number, got '{}'", object, tag, text));
  return value;
}

// An integer key of a COCO file, checked to be whole and within T before the cast (7.8e28 as an id was
// undefined behaviour); `fallback` when given and the key is absent.
template <class T>
T integer_at(const json& object, const char* key, const fs::path& file, std::optional<T> fallback = std::nullopt) {
  if (fallback && !object.contains(key)) return *fallback;
  const json& value = object.at(key);
  if (!detail::holds_integer<T>(value))
    fail_file(file, fmt::format("\"{}\" must be a whole number within the range of its type, got {}", key, value.dump()));
  return value.get<T>();
}

json read_json(const fs::path& path) {
  std::error_code ec;
  if (fs::is_directory(path, ec)) fail_file(path, "is a directory, not a JSON file");
  if (!fs::is_regular_file(path, ec)) fail_file(path, "no such file");
  std::ifstream in(path);
  if (!in) fail_file(path, "cannot open");
  try {
    return json::parse(in);
  } catch (const json::exception& e) {
    fail_file(path, fmt::format("not valid JSON: {}", e.what()));
  }
}

// Index of `name` in `labels`, appending it unless the label set is fixed.
std::int64_t label_index(std::vector<std::string>& labels, const std::string& name, bool fixed, const fs::path& where) {
  const auto it = std::find(labels.begin(), labels.end(), name);
  if (it != labels.end()) return it - labels.begin();
  if (fixed) fail_file(where, fmt::format("label '{}' is not one of {}", name, fmt::join(labels, ", ")));
  labels.push_back(name);
  return static_cast<std::int64_t>(labels.size() - 1);
}

Box checked_box(double x1, double y1, double x2, double y2, const fs::path& where) {
  const Box b{static_cast<float>(x1), static_cast<float>(y1), static_cast<float>(x2), static_cast<float>(y2)};
  try {
    validate_boxes(Span<Box>(&b, 1), "box");
  } catch (const std::invalid_argument& e) {
    fail_file(where, e.what());
  }
  return b;
}

}  // namespace

GroundTruth read_voc(const std::string& path, std::vector<std::string> labels) {
  GroundTruth gt;
  const bool fixed = !labels.empty();
  gt.labels = std::move(labels);
  for (const fs::path& file : files_with(path, ".xml")) {
    pugi::xml_document doc;
    if (const auto parsed = doc.load_file(file.c_str()); !parsed) fail_file(file, fmt::format("not valid XML: {}", parsed.description()));
    const pugi::xml_node annotation = doc.child("annotation");
    if (!annotation) fail_file(file, "no <annotation> element: not Pascal VOC");
    ImageGroundTruth image;
    const std::string filename = annotation.child_value("filename");
    image.image = fs::path(filename.empty() ? file.filename().string() : filename).stem().string();
    image.size = {annotation.child("size").child("width").text().as_int(), annotation.child("size").child("height").text().as_int()};
    for (const pugi::xml_node object : annotation.children("object")) {
      std::string name = object.child_value("name");
      name.erase(0, name.find_first_not_of(" \t\n"));
      name.erase(name.find_last_not_of(" \t\n") + 1);
      if (name.empty()) fail_file(file, fmt::format("object {} has no <name>", image.boxes.size() + 1));
      const pugi::xml_node b = object.child("bndbox");
      if (!b) fail_file(file, fmt::format("object '{}' has no <bndbox>", name));
      GroundTruthBox box;
      box.box = checked_box(voc_coordinate(b, "xmin", name, file), voc_coordinate(b, "ymin", name, file), voc_coordinate(b, "xmax", name, file),
                            voc_coordinate(b, "ymax", name, file), file);
      box.label = label_index(gt.labels, name, fixed, file);
      box.ignore = object.child("difficult").text().as_int() != 0;
      image.boxes.push_back(box);
    }
    gt.images.push_back(std::move(image));
  }
  return gt;
}

GroundTruth read_yolo(const std::string& labels_dir, const std::string& images_dir, std::vector<std::string> labels) {
  GroundTruth gt;
  if (labels.empty()) {  // classes.txt beside the label files or one level up, as YOLO datasets keep it
    for (const fs::path& candidate : {fs::path(labels_dir) / "classes.txt", fs::path(labels_dir).parent_path() / "classes.txt"}) {
      std::ifstream in(candidate);
      for (std::string line; std::getline(in, line);)
        if (!line.empty() && line.find_first_not_of(" \r") != std::string::npos) labels.push_back(line.substr(0, line.find_last_not_of(" \r") + 1));
      if (!labels.empty()) break;
    }
    if (labels.empty()) fail_file(labels_dir, "no label names: pass them, or put classes.txt beside the label files");
  }
  gt.labels = labels;
  const std::map<std::string, std::string> images = images_by_stem(images_dir);
  for (const fs::path& file : files_with(labels_dir, ".txt")) {
    if (file.filename() == "classes.txt") continue;
    ImageGroundTruth image;
    image.image = file.stem().string();
    const auto found = images.find(image.image);
    if (found == images.end()) fail_file(file, fmt::format("no image named '{}.*' in '{}'", image.image, images_dir));
    image.size = read_image(found->second).size();
    std::ifstream in(file);
    int line_number = 0;
    for (std::string line; std::getline(in, line);) {
      ++line_number;
      if (line.find_first_not_of(" \r\t") == std::string::npos) continue;
      std::istringstream fields(line);
      std::int64_t cls = 0;
      double cx = 0, cy = 0, w = 0, h = 0;
      if (!(fields >> cls >> cx >> cy >> w >> h)) fail_file(file, fmt::format("line {}: expected 'class cx cy w h'", line_number));
      if (cls < 0 || static_cast<std::size_t>(cls) >= labels.size())
        fail_file(file, fmt::format("line {}: class {} is outside the {} labels", line_number, cls, labels.size()));
      const double W = image.size.width, H = image.size.height;
      image.boxes.push_back({checked_box((cx - w / 2) * W, (cy - h / 2) * H, (cx + w / 2) * W, (cy + h / 2) * H, file), cls, false});
    }
    gt.images.push_back(std::move(image));
  }
  return gt;
}

GroundTruth read_coco(const std::string& path) {
  const json doc = read_json(path);
  GroundTruth gt;
  try {
    std::map<std::int64_t, std::int64_t> category_index;
    for (const auto& c : doc.at("categories")) {
      category_index[integer_at<std::int64_t>(c, "id", path)] = static_cast<std::int64_t>(gt.labels.size());
      gt.labels.push_back(c.at("name").get<std::string>());
    }
    std::map<std::int64_t, std::size_t> image_index;
    for (const auto& im : doc.at("images")) {
      image_index[integer_at<std::int64_t>(im, "id", path)] = gt.images.size();
      const cv::Size size(integer_at<int>(im, "width", path, 0), integer_at<int>(im, "height", path, 0));
      gt.images.push_back({fs::path(im.at("file_name").get<std::string>()).stem().string(), size, {}});
    }
    for (const auto& a : doc.at("annotations")) {
      const auto bbox = a.at("bbox").get<std::vector<double>>();
      if (bbox.size() != 4) fail_file(path, "an annotation's bbox must be [x, y, w, h]");
      const auto im = image_index.find(integer_at<std::int64_t>(a, "image_id", path));
      const auto cat = category_index.find(integer_at<std::int64_t>(a, "category_id", path));
      if (im == image_index.end() || cat == category_index.end()) fail_file(path, "an annotation names an unknown image or category");
      gt.images[im->second].boxes.push_back(
          {checked_box(bbox[0], bbox[1], bbox[0] + bbox[2], bbox[1] + bbox[3], path), cat->second, a.value("iscrowd", 0) != 0});
    }
  } catch (const json::exception& e) {
    fail_file(path, fmt::format("not COCO instances JSON: {}", e.what()));
  }
  return gt;
}

namespace {

// COCO results (an array) with the coco_images.json that bloodcv analyze writes beside them.
Predictions read_coco_results(const fs::path& path, const json& results) {
  Predictions p;
  const fs::path images_file = path.parent_path() / "coco_images.json";
  if (!fs::exists(images_file)) fail_file(path, "COCO results need coco_images.json beside them (bloodcv analyze writes it)");
  const json images = read_json(images_file);
  std::map<std::int64_t, std::size_t> image_index;
  std::map<std::int64_t, std::int64_t> category_index;
  try {
    for (const auto& c : images.at("categories")) {
      category_index[integer_at<std::int64_t>(c, "id", images_file)] = static_cast<std::int64_t>(p.labels.size());
      p.labels.push_back(c.at("name").get<std::string>());
    }
    for (const auto& im : images.at("images")) {
      image_index[integer_at<std::int64_t>(im, "id", images_file)] = p.images.size();
      p.images.push_back({fs::path(im.at("file_name").get<std::string>()).stem().string(), {}});
    }
    for (const auto& r : results) {
      const auto bbox = r.at("bbox").get<std::vector<double>>();
      const auto im = image_index.find(integer_at<std::int64_t>(r, "image_id", path));
      const auto cat = category_index.find(integer_at<std::int64_t>(r, "category_id", path));
      if (bbox.size() != 4 || im == image_index.end() || cat == category_index.end())
        fail_file(path, "a result has a bad bbox or an unknown image or category id");
      Detection d;
      d.box = checked_box(bbox[0], bbox[1], bbox[0] + bbox[2], bbox[1] + bbox[3], path);
      d.score = r.at("score").get<float>();
      d.label = cat->second;
      p.images[im->second].detections.push_back(d);
    }
  } catch (const json::exception& e) {
    fail_file(path, fmt::format("not COCO results: {}", e.what()));
  }
  return p;
}

// Whether a JSON file holds an array, from its first non-blank character (without parsing it all).
bool starts_with_array(const fs::path& file) {
  std::ifstream in(file);
  char c = 0;
  return static_cast<bool>(in >> c) && c == '[';
}

bool is_report(const json& doc) { return doc.is_object() && doc.value("schema", "") == "bloodcv.analysis"; }

void add_report(Predictions& p, const json& doc, const fs::path& file) {
  try {
    ImagePredictions image;
    const std::string source = doc.at("image").value("path", "");
    image.image = fs::path(source.empty() ? file.filename().string() : source).stem().string();
    for (const auto& cell : doc.at("cells")) {
      const auto b = cell.at("box").get<std::vector<double>>();
      if (b.size() != 4) fail_file(file, "a cell's box must be [x1, y1, x2, y2]");
      Detection d;
      d.box = checked_box(b[0], b[1], b[2], b[3], file);
      d.score = cell.at("score").get<float>();
      d.label = label_index(p.labels, cell.at("label").get<std::string>(), false, file);
      image.detections.push_back(d);
    }
    p.images.push_back(std::move(image));
  } catch (const json::exception& e) {
    fail_file(file, fmt::format("not a bloodcv analysis report: {}", e.what()));
  }
}

}  // namespace

Predictions read_predictions(const std::string& path) {
  const fs::path root(path);
  std::error_code ec;
  if (fs::is_directory(root, ec)) {
    // bloodcv analyze's output: its reports; the COCO files beside them hold the same detections.
    Predictions p;
    for (const fs::path& file : files_with(root, ".json")) {
      if (starts_with_array(file)) continue;  // COCO results beside the reports: the same detections again
      const json doc = read_json(file);
      if (is_report(doc)) add_report(p, doc, file);
    }
    if (!p.images.empty()) return p;
    const fs::path coco = root / "coco_results.json";
    if (fs::exists(coco)) return read_coco_results(coco, read_json(coco));
    fail_file(root, "no bloodcv analysis reports (schema bloodcv.analysis) and no coco_results.json");
  }
  const json doc = read_json(root);
  if (doc.is_array()) return read_coco_results(root, doc);
  if (!is_report(doc)) fail_file(root, "neither a bloodcv analysis report (schema bloodcv.analysis) nor COCO results (a JSON array)");
  Predictions p;
  add_report(p, doc, root);
  return p;
}

std::vector<std::string> read_image_ids(const std::string& path) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) fail_file(path, "no such file");
  std::ifstream in(path);
  std::vector<std::string> ids;
  for (std::string id; in >> id;) ids.push_back(fs::path(id).stem().string());
  if (ids.empty()) fail_file(path, "no image ids in it");
  return ids;
}

GroundTruth select_images(GroundTruth truth, const std::vector<std::string>& names) {
  std::map<std::string, std::size_t> index;
  for (std::size_t i = 0; i < truth.images.size(); ++i) index.emplace(truth.images[i].image, i);
  std::vector<std::string> unknown;
  std::vector<ImageGroundTruth> kept;
  std::set<std::string> taken;
  for (const std::string& name : names) {
    const auto it = index.find(name);
    if (it == index.end()) unknown.push_back(name);
    else if (taken.insert(name).second) kept.push_back(std::move(truth.images[it->second]));
  }
  if (!unknown.empty())
    throw std::invalid_argument(fmt::format("{} of the {} images named are not in the ground truth: {}{}", unknown.size(), names.size(),
                                            fmt::join(unknown.begin(), unknown.begin() + static_cast<std::ptrdiff_t>(std::min<std::size_t>(unknown.size(), 5)), ", "),
                                            unknown.size() > 5 ? ", ..." : ""));
  truth.images = std::move(kept);
  return truth;
}

}  // namespace bloodcv::eval
