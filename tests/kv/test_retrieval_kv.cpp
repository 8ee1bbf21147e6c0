// test_retrieval_kv.cpp: the KV modes end to end on small random-weight models (tests/fixtures):
//   T1  with a budget covering the context every mode gives full attention's logits, bit for bit;
//   T3  freekv with correction on every head, freekv without speculation, arkvale and quest with the
//       same summary and aggregation give identical attention sets and logits;
//   T2  freekv's attention sets equal an eager simulation of design doc 3.6/3.7: a flagged head
//       attends to the top-k of this step's query, an unflagged one to the top-k of the previous
//       step's query over the previous step's candidates (the speculative lag);
//   T5  random delays in the transfer threads change nothing;
//   plus the page life cycle of design doc 3.10, ragged batches, stale-slot detection, and the
//   8-bit CPU store (int8, fp8) against the native one.
#include <gtest/gtest.h>

#include <algorithm>

#include <cstdlib>
#include <cstring>
#include <map>
#include <random>

#include "core/error.h"
#include "engine/retrieval_kv.h"
#include "kv/full_attention_kv.h"
#include "model/model_loader.h"
#include "test_util.h"

namespace freekv {
namespace {

struct Event {
    AttendEvent e;
    std::vector<float> q;
};

struct ModeRun {
    std::vector<std::vector<float>> logits;  // prefill's last row, then one per decode step
    std::vector<Event> events;
    KvStats stats;
};

const LoadedModel& fixture(const std::string& name) {
    static std::map<std::string, LoadedModel> cache;
    auto it = cache.find(name);
    if (it == cache.end()) it = cache.emplace(name, load_model((test::source_dir() / "tests/fixtures/models" / name).string())).first;
    return it->second;
}

using test::random_tokens;

KvModeConfig sparse_config(KvMode mode) {
    KvModeConfig c;
    c.mode = mode;
    c.page_size = 16;
    c.budget = 128;  // 8 slots: 2 sink, 4 selected, 2 recent
    c.sink = 32;
    c.recent = 32;
    c.check_invariants = true;
    return c;
}

// Prefills tokens[0, n_prompt) and decodes the rest one by one (teacher forcing).
// chunk > 0: the prompt is prefilled in forwards of `chunk` tokens (the engine's chunked prefill).
ModeRun run_mode(const LoadedModel& m, const KvModeConfig& mode, const std::vector<int32_t>& tokens, int64_t n_prompt,
                 int64_t chunk = 0) {
    ModeRun run;
    const ModelConfig& c = m.config;
    const auto n = static_cast<int64_t>(tokens.size());
    std::unique_ptr<PagedKvCache> cache;
    std::unique_ptr<AttentionKv> kv;
    RetrievalKv* retrieval = nullptr;
    int32_t seq = 0;
    if (mode.mode == KvMode::kFull) {
        cache = std::make_unique<PagedKvCache>(c.n_layer, c.n_head_kv, c.head_dim, mode.page_size, n / mode.page_size + 2);
        seq = cache->add_sequence();
        kv = std::make_unique<FullAttentionKv>(*cache, c.n_head);
    } else {
        auto r = make_retrieval_kv(c, mode, 1, n);
        retrieval = r.get();
        seq = r->add_sequence(n);
        r->set_observer([&run, &c](const AttendEvent& e) {
            const auto group = static_cast<size_t>(c.group_size() * c.head_dim);
            run.events.push_back({e, std::vector<float>(e.q, e.q + group)});
        });
        kv = std::move(r);
    }
    auto step = [&](int64_t pos0, int64_t count) {
        const SequenceSpan span{seq, pos0, count, 0};
        const int64_t last = count - 1;
        std::vector<float> logits;
        m.model->forward_batch(std::span(tokens).subspan(static_cast<size_t>(pos0), static_cast<size_t>(count)),
                               std::span(&span, 1), *kv, std::span(&last, 1), logits);
        run.logits.push_back(std::move(logits));
    };
    if (chunk <= 0) chunk = n_prompt;
    for (int64_t pos = 0; pos < n_prompt; pos += chunk) step(pos, std::min(chunk, n_prompt - pos));
    for (int64_t i = n_prompt; i < n; ++i) step(i, 1);
    if (retrieval) run.stats = retrieval->stats();
    return run;
}

void expect_same_logits(const ModeRun& a, const ModeRun& b, const std::string& what) {
    ASSERT_EQ(a.logits.size(), b.logits.size());
    for (size_t i = 0; i < a.logits.size(); ++i)
        ASSERT_EQ(0, std::memcmp(a.logits[i].data(), b.logits[i].data(), a.logits[i].size() * sizeof(float)))
            << what << ": logits differ at step " << i;
}

TEST(RetrievalKv, DenseRegimeIsBitIdenticalToFull) {
    for (const std::string name : {"mistral-g2-f32", "qwen2-g7-bf16"}) {
        const LoadedModel& m = fixture(name);
        const auto tokens = random_tokens(200, m.config.n_vocab, 1);
        KvModeConfig full;
        full.mode = KvMode::kFull;
        full.page_size = 16;
        const ModeRun reference = run_mode(m, full, tokens, 100);
        for (KvMode mode : {KvMode::kBudgetOnly, KvMode::kStreaming, KvMode::kQuest, KvMode::kArkvale, KvMode::kFreekv}) {
            KvModeConfig c = sparse_config(mode);
            c.budget = 256;  // 16 slots cover the 13 pages of 200 tokens
            const ModeRun r = run_mode(m, c, tokens, 100);
            expect_same_logits(r, reference, name + " " + kv_mode_name(mode));
            EXPECT_TRUE(r.events.empty()) << "no sparse step expected";
        }
    }
}

TEST(RetrievalKv, AlwaysCorrectModesHaveIdenticalAttentionSets) {
    for (const std::string name : {"mistral-g2-f32", "qwen2-g7-bf16"}) {
        const LoadedModel& m = fixture(name);
        const auto tokens = random_tokens(300, m.config.n_vocab, 2);
        KvModeConfig every_head = sparse_config(KvMode::kFreekv);
        every_head.correction_threshold = 2.0f;  // > 1 flags every head at every step
        KvModeConfig no_spec = sparse_config(KvMode::kFreekv);
        no_spec.spec_retrieval = false;
        KvModeConfig arkvale = sparse_config(KvMode::kArkvale);
        KvModeConfig quest = sparse_config(KvMode::kQuest);
        for (KvModeConfig* c : {&arkvale, &quest}) {
            c->summary = SummaryKind::kMinMax;
            c->group_agg = GroupAgg::kSoftmaxMean;
        }
        const ModeRun a = run_mode(m, every_head, tokens, 150);
        ASSERT_FALSE(a.events.empty());
        for (const KvModeConfig* c : {&no_spec, &arkvale, &quest}) {
            const ModeRun b = run_mode(m, *c, tokens, 150);
            expect_same_logits(a, b, name + " " + c->describe());
            ASSERT_EQ(a.events.size(), b.events.size());
            for (size_t i = 0; i < a.events.size(); ++i) ASSERT_EQ(a.events[i].e.middle_pages, b.events[i].e.middle_pages);
        }
        EXPECT_EQ(a.stats.transfer.background_jobs, 0);  // everything was corrective
        EXPECT_GT(a.stats.transfer.sync_jobs, 0);
    }
}

// The eager simulation of design doc 3.6/3.7 for one KV head: top-k of `q` over the candidates of
// a sequence with n_pages pages, from the summaries the engine wrote.
std::vector<int32_t> eager_selection(const RetrievalKv& kv, const ModelConfig& c, const KvModeConfig& mode, int64_t il,
                                     int32_t seq, int64_t ikv, const std::vector<float>& q, int64_t n_pages) {
    const KvBudget b = mode.make_budget();
    const int64_t first = b.first_candidate(), end = b.end_candidate(n_pages), n = end - first, group = c.group_size();
    std::vector<float> scores(static_cast<size_t>(group * n)), agg(static_cast<size_t>(n));
    score_pages(q.data(), group, c.head_dim, kv.kv().summaries_of(il, seq, ikv), first, end, scores.data());
    aggregate_scores(scores.data(), group, n, mode.aggregation(), agg.data());
    return top_k_pages(agg, first, b.n_select);
}

TEST(RetrievalKv, SpeculativeLagMatchesEagerSimulation) {
    const LoadedModel& m = fixture("mistral-g2-f32");
    const auto tokens = random_tokens(400, m.config.n_vocab, 3);
    for (const char* tau : {"off", "0.2"}) {
        KvModeConfig c = sparse_config(KvMode::kFreekv);
        c.correction_threshold = parse_correction_threshold(tau);
        // Re-run with a handle on the engine so the simulation can read its summaries.
        auto kv = make_retrieval_kv(m.config, c, 1, 400);
        const int32_t seq = kv->add_sequence(400);
        std::map<std::tuple<int64_t, int64_t>, Event> previous;  // (il, ikv) -> last sparse event
        int64_t lagged = 0, flagged = 0, mismatches = 0;
        kv->set_observer([&](const AttendEvent& e) {
            const std::vector<float> q(e.q, e.q + m.config.group_size() * m.config.head_dim);
            auto prev = previous.find({e.il, e.ikv});
            std::vector<int32_t> expected;
            if (e.flagged) {
                expected = eager_selection(*kv, m.config, c, e.il, e.seq, e.ikv, q, e.n_pages);
                ++flagged;
            } else {
                EXPECT_NE(prev, previous.end()) << "an unflagged head needs a previous sparse step";
                EXPECT_EQ(prev->second.e.step, e.step - 1);
                expected = eager_selection(*kv, m.config, c, e.il, e.seq, e.ikv, prev->second.q, prev->second.e.n_pages);
                ++lagged;
            }
            if (expected != e.middle_pages) ++mismatches;
            previous[{e.il, e.ikv}] = Event{e, q};
        });
        std::vector<float> logits;
        const SequenceSpan prompt{seq, 0, 150, 0};
        const int64_t last = 149;
        m.model->forward_batch(std::span(tokens).first(150), std::span(&prompt, 1), *kv, std::span(&last, 1), logits);
        const int64_t zero = 0;
        for (int64_t i = 150; i < 400; ++i) {
            const SequenceSpan span{seq, i, 1, 0};
            m.model->forward_batch(std::span(tokens).subspan(static_cast<size_t>(i), 1), std::span(&span, 1), *kv,
                                   std::span(&zero, 1), logits);
        }
        EXPECT_EQ(mismatches, 0) << "tau " << tau;
        EXPECT_GT(lagged, 100) << "tau " << tau << ": the speculative path was not exercised";
        EXPECT_GT(flagged, 0);
        const KvStats s = kv->stats();
        EXPECT_GT(s.transfer.background_jobs, 0) << "speculative recall moved nothing";
        if (std::string(tau) == "off") {
            EXPECT_EQ(s.correction_rate(), 0.0);
        }
    }
}

// Attention-mass recall and its oracle: one value per (sparse step, layer, query head), each in
// (0, 1]; the oracle (each head's own heaviest pages of the same budget) never below what the mode
// attended; quest's exact per-head bound with max aggregation reaches the oracle on some heads.
TEST(RetrievalKv, MassRecallNeverExceedsItsOracle) {
    const LoadedModel& m = fixture("mistral-g2-f32");
    const auto tokens = random_tokens(300, m.config.n_vocab, 4);
    for (KvMode mode : {KvMode::kFreekv, KvMode::kQuest, KvMode::kBudgetOnly}) {
        KvModeConfig c = sparse_config(mode);
        c.attention_mass_recall = true;
        const ModeRun run = run_mode(m, c, tokens, 150);
        const KvStats& s = run.stats;
        ASSERT_FALSE(s.mass_recall.empty()) << kv_mode_name(mode);
        ASSERT_EQ(s.mass_recall.size(), s.oracle_mass_recall.size()) << kv_mode_name(mode);
        EXPECT_EQ(s.mass_recall.size() % static_cast<size_t>(m.config.n_layer * m.config.n_head), 0u);
        size_t above = 0, reached = 0;
        for (size_t i = 0; i < s.mass_recall.size(); ++i) {
            EXPECT_GT(s.mass_recall[i], 0.0f);
            EXPECT_LE(s.oracle_mass_recall[i], 1.0f + 1e-6f);
            above += s.mass_recall[i] > s.oracle_mass_recall[i] + 1e-6f ? 1 : 0;
            reached += s.mass_recall[i] >= s.oracle_mass_recall[i] - 1e-6f ? 1 : 0;
        }
        EXPECT_EQ(above, 0u) << kv_mode_name(mode) << ": a selection attended more mass than the best one";
        if (mode == KvMode::kQuest) {
            EXPECT_GT(reached, 0u);
        }
        if (mode == KvMode::kBudgetOnly) {
            EXPECT_LT(s.mass_recall_mean(), s.oracle_mass_recall_mean());
        }
    }
}

TEST(RetrievalKv, TransferDelaysChangeNothing) {
    const LoadedModel& m = fixture("mistral-g2-f32");
    const auto tokens = random_tokens(260, m.config.n_vocab, 4);
    KvModeConfig c = sparse_config(KvMode::kFreekv);
    c.correction_threshold = parse_correction_threshold("off");  // every recall on the background path
    const ModeRun calm = run_mode(m, c, tokens, 120);
    ::setenv("FREEKV_TRANSFER_DELAY_US", "400", 1);
    const ModeRun delayed = run_mode(m, c, tokens, 120);
    ::unsetenv("FREEKV_TRANSFER_DELAY_US");
    EXPECT_GT(delayed.stats.transfer.background_jobs, 50);
    expect_same_logits(calm, delayed, "with transfer delays");
}

TEST(RetrievalKv, PageLifeCycleOfTheToyExample) {
    // Design doc 3.10 at p = 16: B = 128 (8 slots), S = 32 (2 pages), W = 48 (3 pages), k = 3.
    const LoadedModel& m = fixture("mistral-g2-f32");
    const ModelConfig& c = m.config;
    KvModeConfig mode = sparse_config(KvMode::kBudgetOnly);
    mode.recent = 48;
    auto kv = make_retrieval_kv(c, mode, 1, 200);
    const int32_t seq = kv->add_sequence(200);
    const auto tokens = random_tokens(160, c.n_vocab, 5);
    std::vector<float> logits;
    auto feed = [&](int64_t pos0, int64_t n) {
        const SequenceSpan span{seq, pos0, n, 0};
        const int64_t last = n - 1;
        m.model->forward_batch(std::span(tokens).subspan(static_cast<size_t>(pos0), static_cast<size_t>(n)),
                               std::span(&span, 1), *kv, std::span(&last, 1), logits);
    };
    const KvManager& kvm = kv->kv();
    auto slot_holds = [&](int64_t slot, int64_t page) {  // slot data == CPU block of page, every layer and head
        std::vector<float> block(static_cast<size_t>(kvm.block_floats()));
        for (int64_t il = 0; il < c.n_layer; ++il)
            for (int64_t ikv = 0; ikv < c.n_head_kv; ++ikv) {
                kvm.read_block(seq, page, il, ikv, block.data());
                for (int64_t r = 0; r < 16; ++r)
                    if (std::memcmp(kvm.slot_k(il, seq, slot) + (r * c.n_head_kv + ikv) * c.head_dim,
                                    block.data() + r * c.head_dim, static_cast<size_t>(c.head_dim) * 4) != 0)
                        return false;
            }
        return true;
    };
    feed(0, 120);  // dense: pages 0-7 in slots 0-7, page 7 current with 8 tokens
    for (int64_t page = 0; page < 7; ++page) EXPECT_TRUE(slot_holds(page, page)) << page;
    for (int64_t i = 120; i < 128; ++i) feed(i, 1);  // page 7 full, still current
    EXPECT_FALSE(kvm.budget().is_sparse(kvm.n_pages(seq)));
    feed(128, 1);  // boundary: page 7 -> ring slot 5 (page 5 leaves the window), page 8 current
    EXPECT_TRUE(slot_holds(5, 7));
    EXPECT_TRUE(slot_holds(6, 6));
    for (int64_t s = 2; s < 5; ++s) {
        EXPECT_TRUE(slot_holds(s, s));  // budget-only keeps the dense middle pages 2, 3, 4
        EXPECT_EQ(kvm.page_of_slot(0, seq, 0, s), s);
    }
    EXPECT_EQ(kvm.slot_of_page(0, seq, 0, 5), -1);  // a candidate now, resident nowhere
    for (int64_t i = 129; i < 145; ++i) feed(i, 1);  // boundary at T = 145: page 8 -> slot 6, page 6 leaves
    EXPECT_TRUE(slot_holds(6, 8));
    EXPECT_TRUE(slot_holds(5, 7));
    EXPECT_EQ(kvm.budget().end_candidate(kvm.n_pages(seq)), 7);  // candidates 2..6
}

TEST(RetrievalKv, RaggedBatchMatchesSequencesRunAlone) {
    const LoadedModel& m = fixture("mistral-g2-f32");
    const ModelConfig& c = m.config;
    const KvModeConfig mode = sparse_config(KvMode::kFreekv);
    const auto a = random_tokens(260, c.n_vocab, 6), b = random_tokens(200, c.n_vocab, 7);
    const ModeRun alone_a = run_mode(m, mode, a, 150), alone_b = run_mode(m, mode, b, 60);
    auto kv = make_retrieval_kv(c, mode, 2, 300);
    const int32_t sa = kv->add_sequence(300), sb = kv->add_sequence(300);
    std::vector<float> logits;
    auto prefill = [&](int32_t seq, const std::vector<int32_t>& t, int64_t n) {
        const SequenceSpan span{seq, 0, n, 0};
        const int64_t last = n - 1;
        m.model->forward_batch(std::span(t).first(static_cast<size_t>(n)), std::span(&span, 1), *kv, std::span(&last, 1), logits);
    };
    prefill(sa, a, 150);
    prefill(sb, b, 60);
    // Decode both together: a at positions 150.., b at 60.. (one dense for a while, one sparse).
    for (int64_t i = 0; i < 110; ++i) {
        const std::vector<int32_t> batch{a[static_cast<size_t>(150 + i)], b[static_cast<size_t>(60 + i)]};
        const SequenceSpan spans[2] = {{sa, 150 + i, 1, 0}, {sb, 60 + i, 1, 1}};
        const int64_t rows[2] = {0, 1};
        m.model->forward_batch(batch, spans, *kv, rows, logits);
        const auto n_vocab = static_cast<size_t>(c.n_vocab);
        // Each span's rows are multiplied apart (cpu::matmul_grouped): the bits of a solo run.
        ASSERT_EQ(0, std::memcmp(logits.data(), alone_a.logits[static_cast<size_t>(i + 1)].data(), n_vocab * 4)) << "a, step " << i;
        ASSERT_EQ(0, std::memcmp(logits.data() + n_vocab, alone_b.logits[static_cast<size_t>(i + 1)].data(), n_vocab * 4))
            << "b, step " << i;
    }
}

// A prompt prefilled in chunks whose boundaries fall on page boundaries (as the engine's do): each
// chunk reads the page the previous chunk ended on (complete but not yet offloaded) from its slot.
// With a budget covering the context every mode then gives full attention's chunked logits bit
// for bit (T1 for chunked prefill; reading that page from the CPU store gave other numbers).
TEST(RetrievalKv, ChunkedPrefillOnPageBoundariesMatchesFull) {
    for (const std::string name : {"mistral-g2-f32", "qwen2-g7-bf16"}) {
        const LoadedModel& m = fixture(name);
        const auto tokens = random_tokens(200, m.config.n_vocab, 21);
        KvModeConfig full = full_kv_mode();
        full.page_size = 16;
        const ModeRun want = run_mode(m, full, tokens, 170, 64);
        for (KvMode km : {KvMode::kBudgetOnly, KvMode::kFreekv}) {
            KvModeConfig mode = sparse_config(km);
            mode.budget = 256;  // the whole context: dense throughout
            expect_same_logits(run_mode(m, mode, tokens, 170, 64), want, name + " " + kv_mode_name(km) + " chunked");
        }
    }
}

// Continuous batching at the KV seam: sequences join with their prefill in the same forward as
// others' decode steps, leave at different times, and a freed slot is reused by a new sequence;
// every sequence's logits equal its solo run bit for bit, in full, budget-only and freekv, on f32
// and bf16 weights.
TEST(RetrievalKv, SequencesJoiningAndLeavingABatchGetTheirSoloLogits) {
    struct Job {
        int64_t n_prompt, n_decode;
        uint32_t seed;
    };
    const std::vector<Job> jobs{{150, 40, 11}, {37, 25, 12}, {260, 30, 13}, {90, 45, 14}, {201, 20, 15}};
    for (const std::string name : {"mistral-g2-f32", "qwen2-g7-bf16"}) {
        const LoadedModel& m = fixture(name);
        const ModelConfig& c = m.config;
        for (KvMode km : {KvMode::kFull, KvMode::kBudgetOnly, KvMode::kFreekv}) {
            KvModeConfig mode = sparse_config(km);
            if (km == KvMode::kFull) mode = full_kv_mode(), mode.page_size = 16;
            std::vector<std::vector<int32_t>> tokens;
            std::vector<ModeRun> alone;
            for (const Job& j : jobs) {
                tokens.push_back(random_tokens(j.n_prompt + j.n_decode, c.n_vocab, j.seed));
                alone.push_back(run_mode(m, mode, tokens.back(), j.n_prompt));
            }
            // Three batch slots for five sequences: the last two wait for a slot to free.
            constexpr int64_t kSlots = 3, kMaxTokens = 320;
            std::unique_ptr<PagedKvCache> cache;
            std::unique_ptr<AttentionKv> kv;
            RetrievalKv* retrieval = nullptr;
            if (km == KvMode::kFull) {
                cache = std::make_unique<PagedKvCache>(c.n_layer, c.n_head_kv, c.head_dim, 16, kSlots * kMaxTokens / 16);
                kv = std::make_unique<FullAttentionKv>(*cache, c.n_head);
            } else {
                auto r = make_retrieval_kv(c, mode, kSlots, kMaxTokens);
                retrieval = r.get();
                kv = std::move(r);
            }
            struct Running {
                size_t job;
                int32_t seq;
                int64_t pos;  // tokens held
                size_t out;   // logits compared so far
            };
            std::vector<Running> running;
            size_t next_job = 0, done = 0;
            std::vector<float> logits;
            const std::string what = name + " " + kv_mode_name(km);
            while (done < jobs.size()) {
                // Admit while a slot is free: its whole prompt is this forward's span.
                std::vector<int32_t> batch;
                std::vector<SequenceSpan> spans;
                std::vector<int64_t> rows;
                for (Running& r : running) {  // decode steps of the running sequences
                    spans.push_back({r.seq, r.pos, 1, static_cast<int64_t>(batch.size())});
                    rows.push_back(static_cast<int64_t>(batch.size()));
                    batch.push_back(tokens[r.job][static_cast<size_t>(r.pos)]);
                }
                if (next_job < jobs.size() && static_cast<int64_t>(running.size()) < kSlots) {
                    const Job& j = jobs[next_job];
                    const int32_t seq = cache ? cache->add_sequence() : retrieval->add_sequence(kMaxTokens);
                    spans.push_back({seq, 0, j.n_prompt, static_cast<int64_t>(batch.size())});
                    batch.insert(batch.end(), tokens[next_job].begin(), tokens[next_job].begin() + j.n_prompt);
                    rows.push_back(static_cast<int64_t>(batch.size()) - 1);
                    running.push_back({next_job++, seq, 0, 0});
                }
                m.model->forward_batch(batch, spans, *kv, rows, logits);
                const auto n_vocab = static_cast<size_t>(c.n_vocab);
                for (size_t i = 0; i < running.size(); ++i) {
                    Running& r = running[i];
                    const auto& want = alone[r.job].logits.at(r.out);
                    ASSERT_EQ(0, std::memcmp(logits.data() + i * n_vocab, want.data(), n_vocab * 4))
                        << what << ": sequence " << r.job << ", output " << r.out;
                    r.pos += spans[i].n_tok;
                    ++r.out;
                }
                // Leave when the solo run's tokens are all fed.
                for (size_t i = running.size(); i-- > 0;) {
                    const Running& r = running[i];
                    if (r.pos < static_cast<int64_t>(tokens[r.job].size())) continue;
                    EXPECT_EQ(r.out, alone[r.job].logits.size()) << what;
                    cache ? cache->remove_sequence(r.seq) : retrieval->remove_sequence(r.seq);
                    running.erase(running.begin() + static_cast<std::ptrdiff_t>(i));
                    ++done;
                }
            }
        }
    }
}

// The 8-bit CPU store (--kv-store-dtype int8 | fp8) on freekv and arkvale, every sparse step's
// invariants checked (a slot holds its page as the store decodes it, or exactly): until the first
// page is offloaded the logits are the native store's bit for bit; afterwards recalled pages are
// decoded approximations, so logits stay close (int8 closer than fp8) but not equal.
TEST(RetrievalKv, An8BitStoreTracksTheNativeStore) {
    const LoadedModel& m = fixture("mistral-g2-f32");
    const auto tokens = random_tokens(300, m.config.n_vocab, 8);
    for (KvMode kind : {KvMode::kFreekv, KvMode::kArkvale}) {
        const KvModeConfig native = sparse_config(kind);
        const ModeRun base = run_mode(m, native, tokens, 150, 64);
        double nmse_int8 = 0;
        for (KvCode code : {KvCode::kInt8, KvCode::kFp8E4m3}) {
            KvModeConfig c = native;
            c.store_code = code;
            const ModeRun q = run_mode(m, c, tokens, 150, 64);
            ASSERT_EQ(q.logits.size(), base.logits.size());
            // The first chunk's logits (nothing read back from the store yet) are identical.
            EXPECT_EQ(q.logits[0], base.logits[0]);
            double err = 0, ref = 0;
            int same_top = 0;
            for (size_t i = 0; i < base.logits.size(); ++i) {
                const auto& a = base.logits[i];
                const auto& b = q.logits[i];
                for (size_t j = 0; j < a.size(); ++j) {
                    err += (a[j] - b[j]) * (a[j] - b[j]);
                    ref += a[j] * a[j];
                }
                same_top += std::max_element(a.begin(), a.end()) - a.begin() == std::max_element(b.begin(), b.end()) - b.begin();
            }
            const double nmse = err / ref;
            const std::string what = std::string(kv_mode_name(kind)) + " " + store_dtype_name(c.store_code);
            std::printf("%s store: logits NMSE %.3g against native, top-1 agreement %d/%zu\n", what.c_str(), nmse, same_top,
                        base.logits.size());
            EXPECT_GT(nmse, 0.0) << what << ": nothing came back from the store";
            // NOTE: bounds from the formats: int8 steps are 1/254 of a group's range, fp8's 1/16 of
            // a value; on this random-weight model they came out at NMSE ~1e-4 and ~1e-3.
            EXPECT_LT(nmse, code == KvCode::kInt8 ? 1e-3 : 3e-2) << what;
            EXPECT_GE(same_top, static_cast<int>(base.logits.size()) * 8 / 10) << what;
            if (code == KvCode::kInt8) nmse_int8 = nmse;
            else EXPECT_LT(nmse_int8, nmse) << what << ": int8 should be the closer code";
        }
    }
}

TEST(KvManager, CheckInvariantsCatchesStaleAndInconsistentSlots) {
    KvManagerShape shape{2, 4, 2, 8, 1, 256, 0, std::nullopt};
    const KvBudget budget = KvBudget::make(16, 128, 32, 32);
    KvManager kv(shape, budget);
    const int32_t seq = kv.admit(256);
    kv.set_n_tokens(seq, 200);  // 13 pages: candidates 2..10
    std::mt19937 rng(1);
    for (int64_t page = 0; page < 12; ++page)
        for (int64_t il = 0; il < 2; ++il)
            for (int64_t ikv = 0; ikv < 2; ++ikv) {
                std::vector<float> block(2 * 16 * 8);
                for (float& x : block) x = static_cast<float>(rng() % 1000);
                kv.write_block(seq, page, il, ikv, block.data());
            }
    for (int64_t il = 0; il < 2; ++il)
        for (int64_t ikv = 0; ikv < 2; ++ikv)
            for (int64_t s = 0; s < 4; ++s) {
                const RecallJob job{seq, static_cast<int32_t>(ikv), static_cast<int32_t>(3 + s), static_cast<int32_t>(2 + s)};
                kv.place(il, seq, ikv, job.page, job.slot);
                kv.recall_now(il, job);
            }
    EXPECT_NO_THROW(kv.check_invariants(1, seq));
    kv.slot_k(1, seq, 4)[3 * 2 * 8 + 8] += 1.0f;  // layer 1, slot 4, row 3, head 1
    try {
        kv.check_invariants(1, seq);
        ADD_FAILURE() << "stale slot not detected";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("stale"), std::string::npos) << e.what();
    }
    kv.recall_now(1, {seq, 1, 5, 4});  // restore, then break the maps
    EXPECT_NO_THROW(kv.check_invariants(1, seq));
    kv.page_of_slot(0, seq, 0, 3) = 11;  // page 11 is in the window, not a candidate
    EXPECT_THROW(kv.check_invariants(0, seq), Error);
}

TEST(KvModeConfig, RecallImplDefaultsPerModeAndParses) {
    // arkvale recalls ArkVale's way (one copy per block) unless told otherwise; every other mode gathers.
    for (KvMode mode : {KvMode::kFull, KvMode::kBudgetOnly, KvMode::kStreaming, KvMode::kQuest, KvMode::kArkvale, KvMode::kFreekv}) {
        KvModeConfig c;
        c.mode = mode;
        EXPECT_EQ(c.recall(), mode == KvMode::kArkvale ? RecallImpl::kPerCopy : RecallImpl::kGather) << kv_mode_name(mode);
        c.recall_impl = RecallImpl::kGather;
        EXPECT_EQ(c.recall(), RecallImpl::kGather);
    }
    EXPECT_EQ(parse_recall_impl("gather"), RecallImpl::kGather);
    EXPECT_EQ(parse_recall_impl("per-copy"), RecallImpl::kPerCopy);
    EXPECT_EQ(parse_recall_impl("dma"), RecallImpl::kDma);
    for (RecallImpl r : {RecallImpl::kGather, RecallImpl::kDma, RecallImpl::kPerCopy})
        EXPECT_EQ(parse_recall_impl(recall_impl_name(r)), r);
    try {
        parse_recall_impl("memcpy");
        ADD_FAILURE() << "memcpy is not a recall path";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("--recall-impl"), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find("dma"), std::string::npos) << "the error lists the choices: " << e.what();
    }
}

}  // namespace
}  // namespace freekv
