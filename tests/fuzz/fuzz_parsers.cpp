// fuzz_parsers.cpp: libFuzzer target for every file parser a user can feed freekv: the first byte
// picks the parser (GGUF file, safetensors file, config.json text, tokenizer.json text), the rest
// is the input. A parser may reject input only with freekv::Error; any crash, sanitizer report or
// other exception is a bug. Build with the `fuzz` preset (clang 14); run e.g.
//   build/fuzz/tests/fuzz/fuzz_parsers -max_total_time=60 -rss_limit_mb=4096
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <string>

#include "core/error.h"
#include "model/loader/gguf.h"
#include "model/loader/tensor_source.h"
#include "model/model_config.h"
#include "tokenizer/bpe_tokenizer.h"

namespace {

std::string temp_dir() {
    static const std::string dir = [] {
        char tmpl[] = "/tmp/freekv-fuzz-XXXXXX";
        return std::string(mkdtemp(tmpl));
    }();
    return dir;
}

void write(const std::string& path, const uint8_t* data, size_t size) {
    FILE* f = std::fopen(path.c_str(), "wb");
    if (f == nullptr) return;
    std::fwrite(data, 1, size, f);
    std::fclose(f);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size < 1) return 0;
    const uint8_t which = data[0] % 4;
    ++data, --size;
    try {
        switch (which) {
            case 0: {
                const std::string path = temp_dir() + "/m.gguf";
                write(path, data, size);
                freekv::open_gguf_model(path);
                break;
            }
            case 1: {
                write(temp_dir() + "/model.safetensors", data, size);
                freekv::open_safetensors_folder(temp_dir());
                break;
            }
            case 2:
                freekv::parse_hf_config(std::string(reinterpret_cast<const char*>(data), size), "config.json");
                break;
            case 3: {
                const freekv::TokenizerSpec spec =
                    freekv::parse_tokenizer_json(std::string(reinterpret_cast<const char*>(data), size), "tokenizer.json");
                freekv::Tokenizer tok(spec);
                tok.encode("Hello world! 123 <|x|>");
                break;
            }
        }
    } catch (const freekv::Error&) {
        // rejected with a message: the expected outcome for malformed input
    }
    return 0;
}
