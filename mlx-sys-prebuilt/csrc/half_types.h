/* Seen by bindgen only, on targets other than aarch64.
 *
 * mlx-c declares float16_t / bfloat16_t and the matching mlx_array_item_* and
 * mlx_array_data_* accessors only where the compiler has native half types (ARM), yet
 * mlx-rs 0.33 calls them on every target. Declaring the two types here makes bindgen
 * emit the same Rust types it emits on aarch64 (`__fp16` and a 16-bit integer); the
 * four functions themselves are defined in half_accessors.cpp. */
#ifndef MLXSUP_HALF_TYPES_H
#define MLXSUP_HALF_TYPES_H
#include <stdint.h>
#define HAS_FLOAT16
#define HAS_BFLOAT16
typedef __fp16 float16_t;
typedef uint16_t bfloat16_t;
#endif
