// Reading untrusted JSON files (configs, model metadata, COCO). nlohmann::json converts a number to an
// integer type with a plain cast: a float beyond the type's range is undefined behaviour (the fuzzers' 1e30
// as a batch size or a stride), and an integer beyond it wraps: read integer keys through holds_integer
// first. And it parses any depth but recurses to copy or write a value: a file nested tens of thousands of
// levels deep overflows the stack, so files that are a few levels deep are parsed with parse_shallow.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
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

// Parses `input` (text or a stream), refusing arrays and objects nested more than `max_depth` levels deep
// with std::runtime_error("nested more than N levels deep"); syntax errors throw nlohmann's parse_error.
template <class Input>
nlohmann::json parse_shallow(Input&& input, int max_depth) {
  using json = nlohmann::json;
  return json::parse(std::forward<Input>(input), [max_depth](int depth, json::parse_event_t event, json&) {
    if ((event == json::parse_event_t::object_start || event == json::parse_event_t::array_start) && depth >= max_depth)
      throw std::runtime_error("nested more than " + std::to_string(max_depth) + " levels deep");
    return true;
  });
}

}  // namespace bloodcv::detail
