// Compression of the store image inside the engine's snapshots (DESIGN.md §2, format 2).
//
// libraft writes a Raft snapshot to disk in one write and one fsync; at 5M objects the 74 MB
// of it queued the Raft log's own fsyncs behind it for tens of ms. A zstd frame of the image
// (level 1, with its content size and checksum) is a fraction of that on disk and on the wire.
// Nothing here runs on the loop thread: compression on the snapshot reaper's thread, with the
// GIL released; decompression on the applier's, when it takes a restore.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "node.hpp"

namespace bknr {

// `in` as one zstd frame in a new chunk; nullptr and `err` set on failure. Any thread.
ChunkPtr compress_image(const char* in, size_t n, int level, std::string* err);

// The decompressed size a frame declares, or false (not a zstd frame, size not recorded, or
// over `limit`). Cheap: reads the frame header only.
bool image_content_size(const char* in, size_t n, uint64_t limit, uint64_t* size);

// Decompress the frame `in` into exactly `cap` bytes at `out`; false and `err` set when the
// frame is damaged (checksum), truncated, or does not decompress to exactly `cap` bytes.
bool decompress_image(const char* in, size_t n, char* out, size_t cap, std::string* err);

}  // namespace bknr
