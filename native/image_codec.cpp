// zstd frames of store images (image_codec.hpp).
#include "image_codec.hpp"

#include <zstd.h>

#include <memory>

namespace bknr {

ChunkPtr compress_image(const char* in, size_t n, int level, std::string* err) {
    std::unique_ptr<ZSTD_CCtx, size_t (*)(ZSTD_CCtx*)> cctx(ZSTD_createCCtx(), ZSTD_freeCCtx);
    if (!cctx) {
        *err = "zstd: out of memory";
        return nullptr;
    }
    ZSTD_CCtx_setParameter(cctx.get(), ZSTD_c_compressionLevel, level);
    ZSTD_CCtx_setParameter(cctx.get(), ZSTD_c_checksumFlag, 1);     // damage shows on restore
    ZSTD_CCtx_setParameter(cctx.get(), ZSTD_c_contentSizeFlag, 1);  // the restore sizes its buffer
    const size_t bound = ZSTD_compressBound(n);
    auto c = std::make_shared<Chunk>();
    // Only the pages the frame fills become resident: the bound is address space, not memory.
    c->base = new char[bound ? bound : 1];
    size_t got = ZSTD_compress2(cctx.get(), c->base, bound, in, n);
    if (ZSTD_isError(got)) {
        *err = std::string("zstd: ") + ZSTD_getErrorName(got);
        return nullptr;
    }
    c->len = got;
    return c;
}

bool image_content_size(const char* in, size_t n, uint64_t limit, uint64_t* size) {
    unsigned long long s = ZSTD_getFrameContentSize(in, n);
    if (s == ZSTD_CONTENTSIZE_UNKNOWN || s == ZSTD_CONTENTSIZE_ERROR || s > limit) return false;
    *size = s;
    return true;
}

bool decompress_image(const char* in, size_t n, char* out, size_t cap, std::string* err) {
    if (ZSTD_findFrameCompressedSize(in, n) != n) {
        *err = "not exactly one zstd frame";
        return false;
    }
    size_t got = ZSTD_decompress(out, cap, in, n);
    if (ZSTD_isError(got)) {
        *err = std::string("zstd: ") + ZSTD_getErrorName(got);
        return false;
    }
    if (got != cap) {
        *err = "decompressed " + std::to_string(got) + " bytes, the frame declares " + std::to_string(cap);
        return false;
    }
    return true;
}

}  // namespace bknr
