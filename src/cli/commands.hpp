// Subcommands of the bloodcv program; each registers its options and returns its runner.
#pragma once

#include <cstdio>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <opencv2/core.hpp>

namespace bloodcv::cli {

using Runner = std::function<int()>;

Runner add_tile_command(CLI::App& app);
Runner add_analyze_command(CLI::App& app);
Runner add_eval_command(CLI::App& app);
Runner add_serve_command(CLI::App& app);

// Replaces this process with `PYTHON -m module arguments...` (the Python the package was built for, or
// $BLOODCV_PYTHON); throws std::runtime_error only when that cannot start.
[[noreturn]] void exec_python_module(const std::string& module, const std::vector<std::string>& arguments);

// "640" or "640x480".
inline cv::Size parse_size(const std::string& text, const char* option = "--tile") {
  int w = 0, h = 0;
  char rest = 0;
  if (std::sscanf(text.c_str(), "%dx%d%c", &w, &h, &rest) == 2) return {w, h};
  if (std::sscanf(text.c_str(), "%d%c", &w, &rest) == 1) return {w, w};
  throw std::invalid_argument(std::string(option) + " must be W or WxH, got '" + text + "'");
}

}  // namespace bloodcv::cli
