// Integers read from JSON files. nlohmann::json converts a number to an integer type with a plain cast:
// a float beyond the type's range is undefined behaviour (the fuzzers' 1e30 as a batch size or a stride),
// and an integer beyond it wraps. Read integer keys through holds_integer first.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include <nlohmann/json.hpp>

namespace bloodcv::detail {

template <class T>
struct IsVector : std::false_type {};
template <class T>
struct IsVector<std::vector<T>> : std::true_type {};

// Whether `value` converts to T (an integer type, or a vector of them) without leaving T's range. Floats
// count when whole and below 2^31 in magnitude (any count or size a file sensibly holds). Values of
// other types, and other T, pass: the conversion's own type error names them.
template <class T>
bool holds_integer(const nlohmann::json& value) {
  if constexpr (IsVector<T>::value) {
    if (!value.is_array()) return true;
    for (const auto& element : value)
      if (!holds_integer<typename T::value_type>(element)) return false;
    return true;
  } else if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
    constexpr auto max = static_cast<std::uint64_t>(std::numeric_limits<T>::max());
    if (value.is_number_unsigned()) return value.get<std::uint64_t>() <= max;
    if (value.is_number_integer()) {
      const auto i = value.get<std::int64_t>();
      return i < 0 ? std::is_signed_v<T> && i >= static_cast<std::int64_t>(std::numeric_limits<T>::min())
                   : static_cast<std::uint64_t>(i) <= max;
    }
    if (value.is_number_float()) {
      const double d = value.get<double>();
      constexpr double bound = 2147483648.0;  // 2^31
      return d == std::trunc(d) && d < bound && d >= (std::is_signed_v<T> ? -bound : 0.0);
    }
    return true;
  } else {
    return true;
  }
}

}  // namespace bloodcv::detail
