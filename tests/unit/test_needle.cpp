// test_needle.cpp: needle placement, scoring and the report. A byte-level tokenizer without merges
// (one token per byte) makes token positions easy to check by hand; cases must have the exact
// length, the needle at the stated depth, and answers must be scored by exact match only; the
// report's grid, side-by-side table and JSON rows must carry the counts they were given.
#include <gtest/gtest.h>

#include <algorithm>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "engine/needle.h"
#include "engine/needle_report.h"
#include "tokenizer/byte_level.h"

namespace freekv {
namespace {

std::unique_ptr<Tokenizer> byte_tokenizer() {
    TokenizerSpec spec;
    for (int i = 0; i < 256; ++i) {
        std::string s;
        append_utf8(s, byte_to_unicode(static_cast<uint8_t>(i)));
        spec.vocab.emplace_back(s, i);
    }
    PreTokenizerStep bl;
    bl.kind = PreTokenizerStep::Kind::kByteLevel;
    spec.pre_tokenizer.push_back(bl);
    return std::make_unique<Tokenizer>(spec);
}

TEST(Needle, ScoringIsExactMatch) {
    EXPECT_TRUE(score_passkey(" 482913. Remember", "482913"));
    EXPECT_TRUE(score_passkey("482913", "482913"));
    EXPECT_FALSE(score_passkey(" 4829134", "482913"));  // longer number
    EXPECT_FALSE(score_passkey(" 48291", "482913"));    // truncated
    EXPECT_FALSE(score_passkey(" 11 482913", "482913")); // first number decides
    EXPECT_FALSE(score_passkey(" none", "482913"));
    EXPECT_TRUE(score_kv("a1b2-c3\" and more", "a1b2-c3"));
    EXPECT_TRUE(score_kv(" \"a1b2-c3\"", "a1b2-c3"));
    EXPECT_FALSE(score_kv("a1b2-c", "a1b2-c3"));
    EXPECT_FALSE(score_kv("x a1b2-c3", "a1b2-c3"));
}

TEST(Needle, PasskeySitsAtTheStatedDepth) {
    auto tok = byte_tokenizer();
    std::string filler;
    for (int i = 0; i < 400; ++i) filler += "The grass is green. ";
    const auto haystack = tok->encode(filler);
    for (double depth : {0.0, 0.1, 0.5, 0.9, 1.0}) {
        std::mt19937_64 rng(7);
        const NeedleCase c = make_passkey_case(*tok, haystack, 1000, depth, rng);
        ASSERT_EQ(c.prompt.size(), 1000u);
        EXPECT_GE(c.answer.size(), 5u);
        EXPECT_LE(c.answer.size(), 8u);
        const std::string text = tok->decode(c.prompt);
        const std::string needle = "\nThe pass key is " + c.answer + ".";
        EXPECT_EQ(text.substr(static_cast<size_t>(c.needle_pos), needle.size()), needle) << depth;
        const auto intro = tok->encode("There is an important pass key hidden inside a lot of irrelevant text. Find it and "
                                       "memorize it.\n\n").size();
        EXPECT_EQ(c.needle_pos - static_cast<int64_t>(intro), std::llround(depth * static_cast<double>(c.filler_tokens)));
        EXPECT_TRUE(text.ends_with("What is the pass key? The pass key is"));
    }
}

TEST(Needle, KeyValueAsksThePairAtTheStatedDepth) {
    auto tok = byte_tokenizer();
    for (double depth : {0.0, 0.5, 1.0}) {
        std::mt19937_64 rng(9);
        const NeedleCase c = make_kv_case(*tok, 2000, depth, rng);
        ASSERT_EQ(c.prompt.size(), 2000u);
        EXPECT_EQ(c.answer.size(), 36u);
        const std::string text = tok->decode(c.prompt);
        const std::string pair = text.substr(static_cast<size_t>(c.needle_pos), 84);  // "k": "v",
        const std::string key = pair.substr(1, 36);
        EXPECT_EQ(pair.substr(41, 36), c.answer);
        EXPECT_NE(text.find("Key: \"" + key + "\""), std::string::npos);
        const int64_t pairs_before = static_cast<int64_t>(std::count(text.begin(), text.begin() + c.needle_pos, ':')) - 1;
        EXPECT_EQ(pairs_before, std::llround(depth * static_cast<double>(c.filler_tokens - 1))) << depth;
    }
}

TEST(Needle, TooShortLengthsAreRefused) {
    auto tok = byte_tokenizer();
    const auto haystack = tok->encode(std::string(5000, 'x'));
    std::mt19937_64 rng(1);
    EXPECT_THROW(make_passkey_case(*tok, haystack, 50, 0.5, rng), Error);
    EXPECT_THROW(make_passkey_case(*tok, tok->encode("short"), 1000, 0.5, rng), Error);
    EXPECT_THROW(make_kv_case(*tok, 80, 0.5, rng), Error);
}

// Two modes over lengths 100 and 200, depths 0 and 100, 2 cases per cell: full (no counters) and a
// retrieval mode whose cells carry counters. Every number printed follows from these counts.
std::vector<NeedleRun> report_runs() {
    NeedleRun full{"passkey", "full", "full", {100, 200}, {0, 100}, 2, {}};
    full.cells = {{100, 0, 2, 2, {}}, {100, 100, 1, 2, {}}, {200, 0, 2, 2, {}}, {200, 100, 2, 2, {}}};
    NeedleRun sparse{"passkey", "freekv", "freekv (test)", {100, 200}, {0, 100}, 2, {}};
    KvStats st;
    st.sparse_pairs = {10};
    st.corrected_pairs = {1};
    st.forced_pairs = st.head_tests = st.head_flags = {0};
    st.sequence_steps = 10;
    st.transfer.sync_jobs = 5;
    st.transfer.background_jobs = 15;
    st.transfer.sync_bytes = 2048;
    st.transfer.background_bytes = 8192;
    sparse.cells = {{100, 0, 2, 2, st}, {100, 100, 0, 2, st}, {200, 0, 1, 2, st}, {200, 100, 0, 2, st}};
    return {full, sparse};
}

TEST(NeedleReport, GridShowsEachCellsAccuracy) {
    const std::string grid = needle_grid_markdown(report_runs()[0]);
    EXPECT_NE(grid.find("| depth | 100 | 200 |"), std::string::npos) << grid;
    EXPECT_NE(grid.find("| 0% | 100% | 100% |"), std::string::npos) << grid;
    EXPECT_NE(grid.find("| 100% | 50% | 100% |"), std::string::npos) << grid;
    EXPECT_NE(grid.find("overall 7/8 = 87.5%"), std::string::npos) << grid;
}

TEST(NeedleReport, SummaryPutsModesSideBySide) {
    const std::string table = needle_summary_markdown(report_runs());
    // full: 3/4 at 100, 4/4 at 200, 7/8 overall, no counters.
    EXPECT_NE(table.find("| full | 75.0% | 100.0% | 87.5% | - | - | - |"), std::string::npos) << table;
    // freekv: 2/4, 1/4, 3/8; counters summed over its 4 cells: correction 4/40, 80 pages over 40
    // tokens, 40 KiB over 40 tokens.
    EXPECT_NE(table.find("| freekv | 50.0% | 25.0% | 37.5% | 0.1000 | 2.00 | 1.0 |"), std::string::npos) << table;
}

TEST(NeedleReport, MassRecallColumnsAppearOnlyWhenMeasured) {
    EXPECT_EQ(needle_summary_markdown(report_runs()).find("mass recall"), std::string::npos);
    auto runs = report_runs();
    // Each of the 4 cells records 0.5 and 1.0 (one step, two heads): mean 0.75 over the 8 values; the
    // 5th percentile of {0.5 x 4, 1.0 x 4} is 0.5. full has no sparse steps and prints dashes.
    // The oracle's (0.75 and 1.0): mean 0.875.
    for (NeedleCell& c : runs[1].cells) {
        c.stats.mass_recall = {0.5f, 1.0f};
        c.stats.oracle_mass_recall = {0.75f, 1.0f};
    }
    const std::string table = needle_summary_markdown(runs);
    EXPECT_NE(table.find("| recall KiB/token | mass recall mean | mass recall p5 | oracle mass recall |"), std::string::npos) << table;
    EXPECT_NE(table.find("| full | 75.0% | 100.0% | 87.5% | - | - | - | - | - | - |"), std::string::npos) << table;
    EXPECT_NE(table.find("| 1.0 | 0.7500 | 0.5000 | 0.8750 |"), std::string::npos) << table;
    const auto row = nlohmann::json::parse(needle_json(runs[1]).substr(0, needle_json(runs[1]).find('\n')));
    EXPECT_DOUBLE_EQ(row["mass_recall_mean"].get<double>(), 0.75);
    EXPECT_DOUBLE_EQ(row["oracle_mass_recall_mean"].get<double>(), 0.875);
}

// Two layers of two query heads, two steps: values are laid out (step, layer, head), so layer 0
// gets {0.1, 0.2, 0.5, 0.6} and layer 1 {0.3, 0.4, 0.7, 0.8}; a partial step gives nothing.
TEST(NeedleReport, MassRecallPerLayerFollowsTheStepLayerHeadOrder) {
    KvStats s;
    s.mass_recall = {0.1f, 0.2f, 0.3f, 0.4f, 0.5f, 0.6f, 0.7f, 0.8f};
    const auto by_layer = s.mass_recall_by_layer(2, 2);
    ASSERT_EQ(by_layer.size(), 2u);
    EXPECT_NEAR(by_layer[0], 0.35, 1e-6);
    EXPECT_NEAR(by_layer[1], 0.55, 1e-6);
    s.mass_recall.pop_back();
    EXPECT_TRUE(s.mass_recall_by_layer(2, 2).empty());
    NeedleRun run = report_runs()[1];
    run.n_layer = 2, run.n_head = 2;
    for (NeedleCell& c : run.cells) c.stats.mass_recall = {0.1f, 0.2f, 0.3f, 0.4f};
    const auto row = nlohmann::json::parse(needle_json(run).substr(0, needle_json(run).find('\n')));
    ASSERT_EQ(row["mass_recall_by_layer"].size(), 2u);
    EXPECT_NEAR(row["mass_recall_by_layer"][1].get<double>(), 0.35, 1e-6);
}

TEST(NeedleReport, JsonHasOneRowPerCell) {
    std::istringstream in(needle_json(report_runs()[1]));
    std::string line;
    int rows = 0;
    while (std::getline(in, line)) {
        const auto row = nlohmann::json::parse(line);
        EXPECT_EQ(row["task"], "passkey");
        EXPECT_EQ(row["kv_mode"], "freekv");
        EXPECT_EQ(row["total"], 2);
        EXPECT_DOUBLE_EQ(row["correction_rate"].get<double>(), 0.1);
        EXPECT_EQ(row["recall_bytes"], 10240);
        if (row["length"] == 200 && row["depth"] == 0) {
            EXPECT_DOUBLE_EQ(row["accuracy"].get<double>(), 0.5);
        }
        ++rows;
    }
    EXPECT_EQ(rows, 4);
    EXPECT_EQ(needle_json(report_runs()[0]).find("correction_rate"), std::string::npos) << "full has no counters";
}

}  // namespace
}  // namespace freekv
