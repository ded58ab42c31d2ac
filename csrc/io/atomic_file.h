// Atomic file writes shared by the io writers (defined in safetensors.cpp, beside the writer that
// first needed it).
#pragma once

#include <string>
#include <string_view>

namespace ecomllm::io {

// Writes `bytes` to a temp file next to `path`, fsyncs it and renames it over `path`: readers see
// the old file or the whole new one, never a part. On failure the temp file is removed, `path` is
// untouched, and RuntimeError says why.
void write_file_atomic(const std::string& path, std::string_view bytes);

}  // namespace ecomllm::io
