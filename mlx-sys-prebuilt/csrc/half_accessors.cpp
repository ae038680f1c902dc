// The float16 / bfloat16 element accessors of mlx-c, for targets where mlx-c leaves
// them out (no native half type). The two-byte value is handed over as raw bits
// (uint16_t), which is what the Rust side reads on every target.
#if !defined(__aarch64__)
#include <cstdint>
#include <cstring>
#include <exception>

#include "mlx/c/error.h"
#include "mlx/c/private/array.h"

namespace {
template <typename Half>
int item_bits(uint16_t* out, const mlx_array arr) {
  static_assert(sizeof(Half) == sizeof(uint16_t));
  try {
    Half v = mlx_array_get_(arr).item<Half>();
    std::memcpy(out, &v, sizeof(uint16_t));
    return 0;
  } catch (std::exception& e) {
    mlx_error(e.what());
    return 1;
  }
}

template <typename Half>
const uint16_t* data_bits(const mlx_array arr) {
  try {
    return reinterpret_cast<const uint16_t*>(mlx_array_get_(arr).data<Half>());
  } catch (std::exception& e) {
    mlx_error(e.what());
    return nullptr;
  }
}
}  // namespace

extern "C" int mlx_array_item_float16(uint16_t* res, const mlx_array arr) {
  return item_bits<mlx::core::float16_t>(res, arr);
}
extern "C" int mlx_array_item_bfloat16(uint16_t* res, const mlx_array arr) {
  return item_bits<mlx::core::bfloat16_t>(res, arr);
}
extern "C" const uint16_t* mlx_array_data_float16(const mlx_array arr) {
  return data_bits<mlx::core::float16_t>(arr);
}
extern "C" const uint16_t* mlx_array_data_bfloat16(const mlx_array arr) {
  return data_bits<mlx::core::bfloat16_t>(arr);
}
#endif
