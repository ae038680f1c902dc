// Force-included into every mlx-c translation unit.
// libstdc++ before GCC 13 (Debian 12 ships GCC 12) has no std::format. mlx-c 0.7.0 uses
// it in one header, only with bare "{}" placeholders; this supplies exactly that much.
#pragma once
#ifdef __cplusplus
#include <version>
#if !defined(__cpp_lib_format)
#include <sstream>
#include <string>
#include <string_view>
namespace std {
namespace mlxsup_format {
inline void put(std::ostringstream& os, std::string_view f) { os << f; }
template <class T, class... Rest>
void put(std::ostringstream& os, std::string_view f, const T& v, const Rest&... rest) {
  const auto at = f.find("{}");
  if (at == std::string_view::npos) {
    os << f;
    return;
  }
  os << f.substr(0, at) << v;
  put(os, f.substr(at + 2), rest...);
}
}  // namespace mlxsup_format
template <class... Args>
std::string format(std::string_view f, const Args&... args) {
  std::ostringstream os;
  mlxsup_format::put(os, f, args...);
  return os.str();
}
}  // namespace std
#endif
#endif
