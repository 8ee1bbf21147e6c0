// needle.cpp: prompt construction, greedy answering and scoring (see needle.h).
#include "engine/needle.h"

#include <cctype>
#include <cmath>

#include "core/error.h"
#include "engine/kv_session.h"
#include "engine/sampler.h"

namespace freekv {

namespace {

std::vector<int32_t> concat(std::initializer_list<const std::vector<int32_t>*> parts) {
    std::vector<int32_t> out;
    for (const auto* p : parts) out.insert(out.end(), p->begin(), p->end());
    return out;
}

std::string random_identifier(std::mt19937_64& rng) {  // 8-4-4-4-12 hex digits, 36 characters
    static const char* hex = "0123456789abcdef";
    std::string s;
    for (int i = 0; i < 32; ++i) {
        if (i == 8 || i == 12 || i == 16 || i == 20) s += '-';
        s += hex[rng() % 16];
    }
    return s;
}

}  // namespace

NeedleCase make_passkey_case(const Tokenizer& tok, const std::vector<int32_t>& haystack, int64_t length, double depth,
                             std::mt19937_64& rng) {
    const int digits = 5 + static_cast<int>(rng() % 4);
    std::string key = std::to_string(1 + rng() % 9);
    for (int i = 1; i < digits; ++i) key += std::to_string(rng() % 10);
    const auto intro = tok.encode("There is an important pass key hidden inside a lot of irrelevant text. Find it and "
                                  "memorize it.\n\n");
    const auto needle = tok.encode("\nThe pass key is " + key + ". Remember it. " + key + " is the pass key.\n");
    const auto question = tok.encode("\n\nWhat is the pass key? The pass key is");
    const int64_t fixed = static_cast<int64_t>(intro.size() + needle.size() + question.size());
    const int64_t n_fill = length - fixed;
    if (n_fill < 1) FREEKV_FAIL("needle length {} is shorter than the {} tokens of instructions and needle", length, fixed);
    if (static_cast<int64_t>(haystack.size()) < n_fill)
        FREEKV_FAIL("the haystack has {} tokens but a length of {} needs {}; pass a longer --haystack", haystack.size(),
                    length, n_fill);
    const auto offset = static_cast<int64_t>(rng() % static_cast<uint64_t>(haystack.size() - static_cast<size_t>(n_fill) + 1));
    const auto at = static_cast<int64_t>(std::llround(depth * static_cast<double>(n_fill)));
    std::vector<int32_t> before(haystack.begin() + offset, haystack.begin() + offset + at);
    std::vector<int32_t> after(haystack.begin() + offset + at, haystack.begin() + offset + n_fill);
    NeedleCase c;
    c.prompt = concat({&intro, &before, &needle, &after, &question});
    c.answer = key;
    c.needle_pos = static_cast<int64_t>(intro.size()) + at;
    c.filler_tokens = n_fill;
    return c;
}

NeedleCase make_kv_case(const Tokenizer& tok, int64_t length, double depth, std::mt19937_64& rng) {
    const auto intro = tok.encode("Extract the value corresponding to the specified key in the JSON object below.\n\n"
                                  "JSON data:\n{");
    auto question_for = [&](const std::string& key) {
        return tok.encode("}\n\nKey: \"" + key + "\"\nThe value associated with the specified key is: \"");
    };
    const auto question_estimate = static_cast<int64_t>(question_for(random_identifier(rng)).size());
    std::vector<std::vector<int32_t>> pairs;
    std::vector<std::pair<std::string, std::string>> kv;
    int64_t used = static_cast<int64_t>(intro.size());
    for (;;) {
        auto k = random_identifier(rng), v = random_identifier(rng);
        auto ids = tok.encode("\"" + k + "\": \"" + v + "\", ");
        if (used + static_cast<int64_t>(ids.size()) + question_estimate > length) break;
        used += static_cast<int64_t>(ids.size());
        pairs.push_back(std::move(ids));
        kv.emplace_back(std::move(k), std::move(v));
    }
    // The asked key's question may tokenize longer than the estimate: drop pairs until it fits.
    size_t asked = 0;
    std::vector<int32_t> question;
    for (;;) {
        if (pairs.empty()) FREEKV_FAIL("needle length {} is too short for one key-value pair", length);
        asked = static_cast<size_t>(std::llround(depth * static_cast<double>(pairs.size() - 1)));
        question = question_for(kv[asked].first);
        if (used + static_cast<int64_t>(question.size()) <= length) break;
        used -= static_cast<int64_t>(pairs.back().size());
        pairs.pop_back();
        kv.pop_back();
    }
    NeedleCase c;
    c.prompt = intro;
    const int64_t pad = length - used - static_cast<int64_t>(question.size());
    FREEKV_CHECK(pad >= 0, "key-value prompt overflows by {} tokens", -pad);
    // Pad with space tokens inside the object so the prompt has exactly `length` tokens.
    c.prompt.insert(c.prompt.end(), static_cast<size_t>(pad), tok.encode(" ").front());
    for (size_t i = 0; i < pairs.size(); ++i) {
        if (i == asked) c.needle_pos = static_cast<int64_t>(c.prompt.size());
        c.prompt.insert(c.prompt.end(), pairs[i].begin(), pairs[i].end());
    }
    c.prompt.insert(c.prompt.end(), question.begin(), question.end());
    c.answer = kv[asked].second;
    c.filler_tokens = static_cast<int64_t>(pairs.size());
    return c;
}

bool score_passkey(const std::string& output, const std::string& key) {
    size_t i = 0;
    while (i < output.size() && !std::isdigit(static_cast<unsigned char>(output[i]))) ++i;
    size_t j = i;
    while (j < output.size() && std::isdigit(static_cast<unsigned char>(output[j]))) ++j;
    return i < output.size() && output.substr(i, j - i) == key;
}

bool score_kv(const std::string& output, const std::string& value) {
    size_t i = 0;
    while (i < output.size() && (output[i] == ' ' || output[i] == '"')) ++i;
    return output.compare(i, value.size(), value) == 0;
}

std::vector<NeedleCell> run_needle(const LoadedModel& model, const std::vector<int32_t>& haystack, const NeedleParams& params,
                                   const std::function<void(int64_t, int64_t)>& progress) {
    FREEKV_CHECK(model.tokenizer != nullptr, "needle needs the model's tokenizer");
    const Tokenizer& tok = *model.tokenizer;
    const int64_t max_new = params.task == NeedleTask::kPasskey ? 16 : 48;
    std::vector<NeedleCell> cells;
    const int64_t total = static_cast<int64_t>(params.lengths.size() * params.depths.size()) * params.trials;
    int64_t done = 0;
    for (int64_t length : params.lengths) {
        if (length + max_new > model.config.n_ctx_train)
            FREEKV_FAIL("needle length {} plus {} answer tokens exceeds the model's context {}", length, max_new,
                        model.config.n_ctx_train);
        for (int depth : params.depths) {
            NeedleCell cell{length, depth, 0, 0, {}};
            // One generator per cell: a cell's cases do not depend on which other cells ran.
            std::mt19937_64 rng(params.seed ^ (static_cast<uint64_t>(length) << 20) ^ static_cast<uint64_t>(depth));
            for (int trial = 0; trial < params.trials; ++trial) {
                const NeedleCase c = params.task == NeedleTask::kPasskey
                                         ? make_passkey_case(tok, haystack, length, depth / 100.0, rng)
                                         : make_kv_case(tok, length, depth / 100.0, rng);
                KvSession session(model, params.mode, length + max_new, params.gpu, params.tensor_parallel, params.gpu_ranks);
                std::vector<float> logits;
                session.forward(c.prompt, logits);
                std::vector<int32_t> answer;
                for (int64_t i = 0; i < max_new; ++i) {
                    const int32_t next = Sampler::argmax(logits);
                    answer.push_back(next);
                    if (i + 1 < max_new) {
                        const int32_t t[1] = {next};
                        session.forward(t, logits);
                    }
                }
                const std::string text = tok.decode(answer, true);
                const bool ok = params.task == NeedleTask::kPasskey ? score_passkey(text, c.answer) : score_kv(text, c.answer);
                cell.correct += ok ? 1 : 0;
                ++cell.total;
                if (session.has_stats()) cell.stats.add(session.stats());
                if (progress) progress(++done, total);
            }
            cells.push_back(cell);
        }
    }
    return cells;
}

}  // namespace freekv
