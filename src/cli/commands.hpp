// Subcommands of the bloodcv program; each registers its options and returns its runner.
#pragma once

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <stdexcept>
#include <string>

#include <CLI/CLI.hpp>
#include <opencv2/core.hpp>

namespace bloodcv::cli {

using Runner = std::function<int()>;

Runner add_tile_command(CLI::App& app);
Runner add_analyze_command(CLI::App& app);
Runner add_eval_command(CLI::App& app);

// "640" or "640x480".
inline cv::Size parse_size(const std::string& text, const char* option = "--tile") {
  int w = 0, h = 0;
  char rest = 0;
  if (std::sscanf(text.c_str(), "%dx%d%c", &w, &h, &rest) == 2) return {w, h};
  if (std::sscanf(text.c_str(), "%d%c", &w, &rest) == 1) return {w, w};
  throw std::invalid_argument(std::string(option) + " must be W or WxH, got '" + text + "'");
}

// Files the commands write appear whole or not at all: `write` fills a hidden file beside `path`
// (same extension, so image writers pick the format), which then replaces `path`.
inline void write_atomically(const std::filesystem::path& path, const std::function<void(const std::filesystem::path&)>& write) {
  const std::filesystem::path partial = path.parent_path() / (".partial." + path.filename().string());
  try {
    write(partial);
    std::filesystem::rename(partial, path);
  } catch (...) {
    std::error_code ignored;
    std::filesystem::remove(partial, ignored);
    throw;
  }
}

inline void write_text_file(const std::filesystem::path& path, const std::string& text) {
  write_atomically(path, [&](const std::filesystem::path& partial) {
    std::ofstream out(partial, std::ios::binary);
    out << text;
    if (!out) throw std::runtime_error("cannot write '" + path.string() + "'");
  });
}

}  // namespace bloodcv::cli
