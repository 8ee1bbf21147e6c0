// tokenizer_json.cpp: reads a Hugging Face tokenizer.json into a TokenizerSpec. Supports the
// byte-level BPE family; any other component is rejected with a message naming it.
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/mapped_file.h"
#include "tokenizer/bpe_tokenizer.h"

namespace freekv {

namespace {

using nlohmann::json;

// A token id: a JSON integer in [0, 2^31 - 1) (a float or a huge number would convert with
// undefined behaviour; a negative id would index outside the vocabulary).
int32_t token_id(const json& v, const std::string& path, const char* what) {
    if (!v.is_number_integer() || (v.is_number_unsigned() ? v.get<uint64_t>() >= (1ULL << 31) - 1
                                                          : (v.get<int64_t>() < 0 || v.get<int64_t>() >= (int64_t{1} << 31) - 1)))
        FREEKV_FAIL("{}: {} id {} is not an integer in [0, 2^31 - 1)", path, what, v.dump());
    return static_cast<int32_t>(v.get<int64_t>());
}

SplitBehavior parse_behavior(const std::string& s, const std::string& path) {
    if (s == "Isolated") return SplitBehavior::kIsolated;
    if (s == "Removed") return SplitBehavior::kRemoved;
    if (s == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
    if (s == "MergedWithNext") return SplitBehavior::kMergedWithNext;
    if (s == "Contiguous") return SplitBehavior::kContiguous;
    FREEKV_FAIL("{}: Split behavior '{}' is not supported", path, s);
}

void parse_normalizer(const json& n, TokenizerSpec& spec, const std::string& path) {
    if (n.is_null()) return;
    const std::string type = n.value("type", "");
    if (type == "Sequence") {
        for (const auto& sub : n.at("normalizers")) parse_normalizer(sub, spec, path);
    } else if (type == "NFC") {
        spec.normalize_nfc = true;
    } else {
        FREEKV_FAIL("{}: normalizer '{}' is not supported (supported: none, NFC)", path, type);
    }
}

void parse_pre_tokenizer(const json& p, TokenizerSpec& spec, const std::string& path) {
    if (p.is_null()) return;
    const std::string type = p.value("type", "");
    PreTokenizerStep step;
    if (type == "Sequence") {
        for (const auto& sub : p.at("pretokenizers")) parse_pre_tokenizer(sub, spec, path);
        return;
    }
    if (type == "Split") {
        step.kind = PreTokenizerStep::Kind::kSplit;
        const json& pattern = p.at("pattern");
        if (pattern.contains("Regex")) {
            step.pattern = pattern["Regex"].get<std::string>();
        } else if (pattern.contains("String")) {
            step.pattern = pattern["String"].get<std::string>();
            step.literal = true;
        } else {
            FREEKV_FAIL("{}: Split pattern has neither Regex nor String", path);
        }
        step.behavior = parse_behavior(p.value("behavior", "Isolated"), path);
        step.invert = p.value("invert", false);
    } else if (type == "ByteLevel") {
        step.kind = PreTokenizerStep::Kind::kByteLevel;
        step.add_prefix_space = p.value("add_prefix_space", false);
        step.use_regex = p.value("use_regex", true);
    } else if (type == "Digits") {
        step.kind = PreTokenizerStep::Kind::kDigits;
        step.individual_digits = p.value("individual_digits", false);
    } else {
        FREEKV_FAIL("{}: pre-tokenizer '{}' is not supported (supported: Sequence, Split, ByteLevel, Digits)", path,
                    type);
    }
    spec.pre_tokenizer.push_back(std::move(step));
}

void parse_post_processor(const json& p, TokenizerSpec& spec, const std::string& path) {
    if (p.is_null()) return;
    const std::string type = p.value("type", "");
    if (type == "Sequence") {
        for (const auto& sub : p.at("processors")) parse_post_processor(sub, spec, path);
    } else if (type == "ByteLevel") {
        // offsets only; ids unchanged
    } else if (type == "TemplateProcessing") {
        bool after_sequence = false;
        for (const auto& item : p.at("single")) {
            if (item.contains("Sequence")) {
                after_sequence = true;
                continue;
            }
            const std::string name = item.at("SpecialToken").at("id").get<std::string>();
            const json& special = p.at("special_tokens").at(name);
            for (const auto& id : special.at("ids"))
                (after_sequence ? spec.suffix_ids : spec.prefix_ids).push_back(token_id(id, path, "post-processor special token"));
        }
    } else {
        FREEKV_FAIL("{}: post-processor '{}' is not supported (supported: ByteLevel, TemplateProcessing)", path, type);
    }
}


}  // namespace

TokenizerSpec parse_tokenizer_json(const std::string& json_text, const std::string& path) {
    json j;
    try {
        j = json::parse(json_text);
    } catch (const json::exception& e) {
        FREEKV_FAIL("{}: not valid JSON ({})", path, e.what());
    }
    TokenizerSpec spec;
    try {
        const json& model = j.at("model");
        const std::string type = model.value("type", "BPE");
        if (type != "BPE") FREEKV_FAIL("{}: tokenizer model '{}' is not supported (only byte-level BPE)", path, type);
        if (model.value("byte_fallback", false))
            FREEKV_FAIL("{}: byte_fallback BPE (SentencePiece style) is not supported", path);
        for (const auto& [text, id] : model.at("vocab").items()) spec.vocab.emplace_back(text, token_id(id, path, "vocabulary"));
        for (const auto& m : model.at("merges")) {
            if (m.is_string()) {
                const std::string s = m.get<std::string>();
                const size_t space = s.find(' ', 1);
                if (space == std::string::npos) FREEKV_FAIL("{}: merge '{}' has no space", path, s);
                spec.merges.emplace_back(s.substr(0, space), s.substr(space + 1));
            } else {
                spec.merges.emplace_back(m.at(0).get<std::string>(), m.at(1).get<std::string>());
            }
        }
        spec.ignore_merges = model.value("ignore_merges", false);
        if (model.contains("unk_token") && model["unk_token"].is_string()) {
            auto it = model["vocab"].find(model["unk_token"].get<std::string>());
            if (it != model["vocab"].end()) spec.unk_id = token_id(*it, path, "unk_token");
        }
        if (j.contains("added_tokens")) {
            for (const auto& t : j["added_tokens"]) {
                AddedToken a;
                a.id = token_id(t.at("id"), path, "added token");
                a.content = t.at("content").get<std::string>();
                a.special = t.value("special", false);
                a.lstrip = t.value("lstrip", false);
                a.rstrip = t.value("rstrip", false);
                a.normalized = t.value("normalized", false);
                a.single_word = t.value("single_word", false);
                spec.added_tokens.push_back(std::move(a));
            }
        }
        parse_normalizer(j.value("normalizer", json()), spec, path);
        parse_pre_tokenizer(j.value("pre_tokenizer", json()), spec, path);
        parse_post_processor(j.value("post_processor", json()), spec, path);
        if (j.contains("decoder") && !j["decoder"].is_null()) {
            const std::string dec = j["decoder"].value("type", "");
            if (dec != "ByteLevel") FREEKV_FAIL("{}: decoder '{}' is not supported (only ByteLevel)", path, dec);
        }
    } catch (const json::exception& e) {
        FREEKV_FAIL("{}: unexpected structure ({})", path, e.what());
    }
    return spec;
}

std::unique_ptr<Tokenizer> load_tokenizer_json(const std::string& path) {
    return std::make_unique<Tokenizer>(parse_tokenizer_json(read_text_file(path), path));
}

}  // namespace freekv
