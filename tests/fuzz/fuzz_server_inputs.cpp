// fuzz_server_inputs.cpp: libFuzzer target for everything a client or a model folder hands the
// server: the first byte picks what the rest is fed to:
//   0  a POST /v1/completions body (parse_completion_request);
//   1  a POST /v1/chat/completions body (parse_chat_request), then the parsed messages rendered in
//      both chat formats and the prompt encoded, as the server does;
//   2  a chat_template text (ChatTemplate::from_template_text), rendered when recognised;
//   3  a list of token ids (4 bytes each, little-endian) decoded by the tokenizer, specials kept
//      and skipped: what /detokenize does with a client's ids;
//   4  a tokenizer_config.json file (ChatTemplate::template_text of a folder holding it).
// A request may be refused only with BadRequest, a file or id list only with freekv::Error; any
// crash, sanitizer report or other exception is a bug. Build with the `fuzz` preset (clang 14).
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "core/error.h"
#include "serve/chat_template.h"
#include "serve/completion_request.h"
#include "tokenizer/bpe_tokenizer.h"
#include "tokenizer/byte_level.h"

namespace {

using freekv::serve::BadRequest;
using freekv::serve::ChatTemplate;

// A byte-level vocabulary (ids 0..255) plus the special tokens of both chat formats (256..261).
const freekv::Tokenizer& tokenizer() {
    static const freekv::Tokenizer tok = [] {
        freekv::TokenizerSpec spec;
        for (int i = 0; i < 256; ++i) {
            std::string s;
            freekv::append_utf8(s, freekv::byte_to_unicode(static_cast<uint8_t>(i)));
            spec.vocab.emplace_back(s, i);
        }
        int32_t id = 256;
        for (const char* t : {"<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|im_start|>",
                              "<|im_end|>"}) {
            freekv::AddedToken a;
            a.id = id++;
            a.content = t;
            a.special = true;
            spec.added_tokens.push_back(a);
            spec.vocab.emplace_back(t, a.id);
        }
        freekv::PreTokenizerStep bl;
        bl.kind = freekv::PreTokenizerStep::Kind::kByteLevel;
        spec.pre_tokenizer.push_back(bl);
        return freekv::Tokenizer(spec);
    }();
    return tok;
}

const ChatTemplate& chat_format(bool llama3) {
    static const ChatTemplate l = *ChatTemplate::from_template_text("<|start_header_id|>", tokenizer());
    static const ChatTemplate c = *ChatTemplate::from_template_text("<|im_start|>", tokenizer());
    return llama3 ? l : c;
}

std::string temp_dir() {
    static const std::string dir = [] {
        char tmpl[] = "/tmp/freekv-fuzz-server-XXXXXX";
        return std::string(mkdtemp(tmpl));
    }();
    return dir;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size < 1) return 0;
    const uint8_t which = data[0] % 5;
    const std::string_view rest(reinterpret_cast<const char*>(data + 1), size - 1);
    try {
        switch (which) {
            case 0:
                freekv::serve::parse_completion_request(rest);
                break;
            case 1: {
                const auto request = freekv::serve::parse_chat_request(rest);
                for (bool llama3 : {true, false}) tokenizer().encode(chat_format(llama3).render(request.messages), true);
                break;
            }
            case 2:
                if (const auto t = ChatTemplate::from_template_text(std::string(rest), tokenizer()))
                    tokenizer().encode(t->render({{"system", "s"}, {"user", std::string(rest.substr(0, 64))}}), true);
                break;
            case 3: {
                std::vector<int32_t> ids(rest.size() / 4);
                if (!ids.empty()) std::memcpy(ids.data(), rest.data(), ids.size() * 4);
                tokenizer().decode(ids);
                tokenizer().decode(ids, true);
                break;
            }
            case 4: {
                const std::string path = temp_dir() + "/tokenizer_config.json";
                if (FILE* f = std::fopen(path.c_str(), "wb")) {
                    std::fwrite(rest.data(), 1, rest.size(), f);
                    std::fclose(f);
                }
                ChatTemplate::template_text(temp_dir());
                break;
            }
        }
    } catch (const BadRequest&) {
        // a 400 with a message: the expected outcome for a malformed request
    } catch (const freekv::Error&) {
        // rejected with a message: the expected outcome for malformed files, text or ids
    }
    return 0;
}
