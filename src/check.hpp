// Argument checks shared by the implementation: each failure says which argument and which value.
#pragma once

#include <cmath>
#include <stdexcept>
#include <string_view>

#include <fmt/format.h>

namespace bloodcv::detail {

template <class... Args>
[[noreturn]] void fail_argument(fmt::format_string<Args...> format, Args&&... args) {
  throw std::invalid_argument(fmt::format(format, std::forward<Args>(args)...));
}

inline void check_unit_interval(double value, std::string_view name) {
  if (!(value >= 0.0 && value <= 1.0)) fail_argument("{} must be in [0, 1], got {}", name, value);
}

inline void check_positive(double value, std::string_view name) {
  if (!(value > 0.0) || !std::isfinite(value)) fail_argument("{} must be positive and finite, got {}", name, value);
}

}  // namespace bloodcv::detail
