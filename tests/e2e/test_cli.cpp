// test_cli.cpp: the freekv binary end to end: errors name what to change and exit non-zero; on the
// reference model (when ../shared exists) greedy generate prints the golden continuation and a perf
// block, tokenize prints the golden ids; a prompt longer than the context is refused.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

#include "engine/bench.h"
#include "test_util.h"

namespace freekv {
namespace {

struct Result {
    int code;
    std::string output;  // stdout and stderr together
};

Result run(const std::string& args) {
    const std::string cmd = std::string(FREEKV_BINARY_PATH) + " " + args + " 2>&1";
    FILE* pipe = popen(cmd.c_str(), "r");
    if (pipe == nullptr) return {-1, "popen failed"};
    std::string out;
    std::array<char, 4096> buf{};
    while (size_t n = fread(buf.data(), 1, buf.size(), pipe)) out.append(buf.data(), n);
    const int status = pclose(pipe);
    return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

int count_of(const std::string& text, const std::string& what) {
    int n = 0;
    for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
    return n;
}

TEST(Cli, MissingModelPathIsAClearError) {
    const Result r = run("generate -m /nonexistent/model -p hi");
    EXPECT_EQ(r.code, 1);
    EXPECT_NE(r.output.find("error: model path /nonexistent/model does not exist"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("-m"), std::string::npos) << r.output;
}

// A stray word (a prompt without -p) says where it belongs, naming flags that exist.
TEST(Cli, AStrayWordSaysWhereItGoes) {
    const Result r = run("generate -m /nonexistent/model 'Once upon a time'");
    EXPECT_NE(r.code, 0);
    EXPECT_NE(r.output.find("Once upon a time"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("-p/--prompt"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("freekv generate --help"), std::string::npos) << r.output;
    const Result b = run("bench --shape tiny extra");  // bench takes no prompt
    EXPECT_NE(b.code, 0);
    EXPECT_NE(b.output.find("every value follows its flag"), std::string::npos) << b.output;
    EXPECT_EQ(b.output.find("--prompt"), std::string::npos) << b.output;
}

TEST(Cli, FolderWithoutConfigIsAClearError) {
    test::TempDir dir("freekv-cli");
    const Result r = run("inspect -m " + dir.path.string());
    EXPECT_EQ(r.code, 1);
    EXPECT_NE(r.output.find("has no config.json"), std::string::npos) << r.output;
}

TEST(Cli, DeviceAutoFallsBackToCpuWithOneLine) {
    auto dir = test::ref_model_dir();
    if (!dir) GTEST_SKIP() << "../shared/models/freekv-ref-28m not found";
    const Result r = run("generate -m " + dir->string() + " -p 'The' -n 2 --temp 0 --no-progress --device auto");
    EXPECT_EQ(r.code, 0) << r.output;
    // Without a GPU (CI) the fallback line names the reason; with one, it says the CPU backend runs.
    EXPECT_NE(r.output.find("Pass --device cpu to skip this check."), std::string::npos) << r.output;
    const Result cuda = run("generate -m " + dir->string() + " -p 'The' -n 2 --device cuda");
    EXPECT_EQ(cuda.code, 1);
    EXPECT_NE(cuda.output.find("--device cuda"), std::string::npos) << cuda.output;
}

TEST(Cli, VersionAndHelp) {
    EXPECT_EQ(run("--version").code, 0);
    const Result r = run("generate --help");
    EXPECT_EQ(r.code, 0);
    EXPECT_NE(r.output.find("--n-predict"), std::string::npos);
}

TEST(Cli, GenerateOnReferenceModel) {
    auto dir = test::ref_model_dir();
    if (!dir) GTEST_SKIP() << "../shared/models/freekv-ref-28m not found";
    const Result r = run("generate -m " + dir->string() +
                         " -p 'And it came to pass, when the king had heard these words, that he' -n 32 --temp 0 --no-progress");
    EXPECT_EQ(r.code, 0) << r.output;
    EXPECT_NE(r.output.find(" said unto him, What is the matter with you?\nAnd he said, What is the matter with you? "
                            "And he said, I know that the king"),
              std::string::npos)
        << r.output;
    EXPECT_NE(r.output.find("perf: prompt eval time"), std::string::npos);
    EXPECT_NE(r.output.find("perf: TTFT"), std::string::npos);
    EXPECT_NE(r.output.find("load: arch llama | n_layer 8"), std::string::npos);
}

// The model split over 2 ranks (threads on the CPU) prints the same golden continuation; splits the
// model cannot take, and commands that cannot run ranks yet, are refused naming what would work.
TEST(Cli, TensorParallelGenerateOnReferenceModel) {
    auto dir = test::ref_model_dir();
    if (!dir) GTEST_SKIP() << "../shared/models/freekv-ref-28m not found";
    const Result r = run("generate -m " + dir->string() +
                         " -p 'And it came to pass, when the king had heard these words, that he' -n 32 --temp 0 --no-progress "
                         "--device cpu --tensor-parallel 2");
    EXPECT_EQ(r.code, 0) << r.output;
    EXPECT_NE(r.output.find(" said unto him, What is the matter with you?\nAnd he said, What is the matter with you? "
                            "And he said, I know that the king"),
              std::string::npos)
        << r.output;
    const Result three = run("generate -m " + dir->string() + " -p 'one two' -n 2 --device cpu --tensor-parallel 3");
    EXPECT_EQ(three.code, 1);
    EXPECT_NE(three.output.find("2 KV heads do not divide among 3 ranks"), std::string::npos) << three.output;
    EXPECT_NE(three.output.find("use one of 1, 2"), std::string::npos) << three.output;
    const Result bench = run("bench --shape tiny -d 256 --device cpu --tensor-parallel 2");
    EXPECT_EQ(bench.code, 1);
    EXPECT_NE(bench.output.find("--tensor-parallel 2 on GPUs only (--device cuda)"), std::string::npos) << bench.output;
    // --tp-gpus places GPU ranks: on the CPU it is refused, naming what to do (before the model loads).
    const Result gpus = run("perplexity -m " + dir->string() + " -f /dev/null --device cpu --tensor-parallel 2 --tp-gpus 0,0");
    EXPECT_EQ(gpus.code, 1);
    EXPECT_NE(gpus.output.find("--tp-gpus places tensor-parallel ranks on GPUs"), std::string::npos) << gpus.output;
}

// inspect --memory-plan needs no model file: each GPU's share of the 70B shape over 4 GPUs and the
// sequences that fit; one 80 GiB GPU cannot hold its weights; a bare --shape is refused.
TEST(Cli, InspectPrintsEachGpusMemoryPlan) {
    const Result r = run("inspect --shape llama-3.1-70b --memory-plan -c 32768 --tensor-parallel 4 --gpu-memory-gib 80");
    ASSERT_EQ(r.code, 0) << r.output;
    EXPECT_EQ(count_of(r.output, " of 4 (KV heads "), 4) << r.output;
    EXPECT_NE(r.output.find("weights 32.86 GiB"), std::string::npos) << r.output;  // (80 layers' slices + vocab) / 4
    EXPECT_NE(r.output.find("fits "), std::string::npos) << r.output;
    const Result one = run("inspect --shape llama-3.1-70b --memory-plan -c 32768 --gpu-memory-gib 80");
    EXPECT_NE(one.output.find("fits 0 sequences"), std::string::npos) << one.output;
    const Result bare = run("inspect --shape tiny");
    EXPECT_EQ(bare.code, 1);
    EXPECT_NE(bare.output.find("--memory-plan"), std::string::npos) << bare.output;
}

TEST(Cli, PromptLongerThanContextIsRefused) {
    auto dir = test::ref_model_dir();
    if (!dir) GTEST_SKIP() << "../shared/models/freekv-ref-28m not found";
    const Result r = run("generate -m " + dir->string() + " -p 'one two three four five six seven' -c 4 -n 4");
    EXPECT_EQ(r.code, 1);
    EXPECT_NE(r.output.find("-c/--ctx-size"), std::string::npos) << r.output;
}

TEST(Cli, PerplexityComparesModesInOneRun) {
    auto dir = test::ref_model_dir();
    if (!dir) GTEST_SKIP() << "../shared/models/freekv-ref-28m not found";
    const auto text = *test::shared_dir() / "text" / "eval_wp_tail.txt";
    const Result r = run("perplexity -m " + dir->string() + " -f " + text.string() +
                         " -c 512 --prefix 256 --chunks 1 --kv-mode full,streaming,freekv --kv-budget 192 --kv-sink 32 "
                         "--kv-recent 64 --compare full --no-progress -o json");
    ASSERT_EQ(r.code, 0) << r.output;
    // full against itself: zero KL, perfect agreement; the others scored over the same 256 tokens.
    EXPECT_NE(r.output.find("{\"kv_mode\":\"full\""), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("\"kl_mean\":0,\"kl_p99\":0,\"top1\":1.000000"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("{\"kv_mode\":\"streaming\""), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("{\"kv_mode\":\"freekv\""), std::string::npos) << r.output;
    EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n') >= 3, true);
}

TEST(Cli, PerplexityRejectsBadFlags) {
    auto dir = test::ref_model_dir();
    if (!dir) GTEST_SKIP() << "../shared/models/freekv-ref-28m not found";
    const auto text = *test::shared_dir() / "text" / "eval_wp_tail.txt";
    Result r = run("perplexity -m " + dir->string() + " -f " + text.string() + " -c 512 --prefix 256 --kv-budget 100");
    EXPECT_EQ(r.code, 1);
    EXPECT_NE(r.output.find("--kv-budget 100 must be a multiple of --kv-page-size 32"), std::string::npos) << r.output;
    r = run("perplexity -m " + dir->string() + " -f " + text.string() + " -c 512 --prefix 256 --kv-mode bogus");
    EXPECT_NE(r.output.find("--kv-mode 'bogus' must be one of"), std::string::npos) << r.output;
    r = run("perplexity -m " + dir->string() + " -f " + text.string() + " -c 512 --prefix 600");
    EXPECT_NE(r.output.find("--prefix 600"), std::string::npos) << r.output;
    r = run("perplexity -m " + dir->string() + " -f " + text.string() + " -c 512 --prefix 256 --gpu-dtype f16");
    EXPECT_NE(r.code, 0);
    EXPECT_NE(r.output.find("--gpu-dtype"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("bf16"), std::string::npos) << "the error lists the accepted values: " << r.output;
}

TEST(Cli, NeedleRunsEndToEnd) {
    auto dir = test::ref_model_dir();
    if (!dir) GTEST_SKIP() << "../shared/models/freekv-ref-28m not found";
    const auto text = *test::shared_dir() / "text" / "eval_wp_tail.txt";
    const Result r = run("needle -m " + dir->string() + " --haystack " + text.string() +
                         " --lengths 200,300 --depths 0,50,100 --trials 1 --kv-mode full,freekv --kv-budget 128 --kv-sink 32 "
                         "--kv-recent 64 --no-progress");
    ASSERT_EQ(r.code, 0) << r.output;
    EXPECT_NE(r.output.find("| depth | 200 | 300 |"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("| 50% |"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("overall "), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("/6 = "), std::string::npos) << r.output;
    // Both modes side by side: full without retrieval counters, freekv with them.
    EXPECT_NE(r.output.find("| kv mode | 200 | 300 | overall | correction rate |"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("% | - | - | - |"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("\n| freekv | "), std::string::npos) << r.output;
    const Result kv = run("needle -m " + dir->string() + " --task kv --lengths 300 --depths 0,100 --trials 1 -o json "
                          "--kv-mode freekv --kv-budget 128 --kv-sink 32 --kv-recent 64 --no-progress");
    ASSERT_EQ(kv.code, 0) << kv.output;
    EXPECT_EQ(count_of(kv.output, "{\"task\":\"kv\",\"kv_mode\":\"freekv\""), 2) << kv.output;
    EXPECT_NE(kv.output.find("\"correction_rate\":"), std::string::npos) << kv.output;
    // Markdown on stdout and the same rows appended to --json.
    const auto json = std::filesystem::temp_directory_path() / ("freekv_needle_" + std::to_string(::getpid()) + ".jsonl");
    std::filesystem::remove(json);
    const Result both = run("needle -m " + dir->string() + " --task kv --lengths 300 --depths 0,100 --trials 1 --json " +
                            json.string() + " --kv-mode full --no-progress");
    ASSERT_EQ(both.code, 0) << both.output;
    EXPECT_NE(both.output.find("| depth | 300 |"), std::string::npos) << both.output;
    std::ifstream in(json);
    const std::string rows((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    EXPECT_EQ(count_of(rows, "{\"task\":\"kv\",\"kv_mode\":\"full\""), 2) << rows;
    std::filesystem::remove(json);
    const Result bad = run("needle -m " + dir->string() + " --task kv --lengths 300 --json /nonexistent/dir/x.jsonl --no-progress");
    EXPECT_EQ(bad.code, 1);
    EXPECT_NE(bad.output.find("--json /nonexistent/dir/x.jsonl: cannot open it"), std::string::npos) << bad.output;
    const Result missing = run("needle -m " + dir->string() + " --lengths 200");
    EXPECT_EQ(missing.code, 1);
    EXPECT_NE(missing.output.find("--haystack"), std::string::npos) << missing.output;
}

TEST(Cli, BenchTinyPrintsEveryMode) {
    const Result r = run("bench --shape tiny -d 300 -b 1,2 -n 3 -r 1 --kv-budget 256 --kv-sink 32 --kv-recent 64 --device cpu");
    ASSERT_EQ(r.code, 0) << r.output;
    for (const char* mode : {"full", "budget-only", "streaming", "quest", "arkvale", "freekv", "freekv:corr-off", "freekv:no-spec"})
        for (const char* batch : {"| 300 | 1 |", "| 300 | 2 |"})
            EXPECT_NE(r.output.find(std::string("| ") + mode + " " + batch), std::string::npos) << mode << batch << "\n" << r.output;
    EXPECT_NE(r.output.find("| budget-only | 300 | 1 |"), std::string::npos);
    EXPECT_NE(r.output.find("| 100% |"), std::string::npos) << "budget-only is its own floor";
    EXPECT_NE(r.output.find("forced at rate 0.50"), std::string::npos);
    const Result bad = run("bench --shape nope --device cpu");
    EXPECT_EQ(bad.code, 1);
    EXPECT_NE(bad.output.find("--shape 'nope'"), std::string::npos) << bad.output;
    // A depth that leaves no room for the generated tokens names every part of them.
    const Result full = run("bench --shape tiny -d 32760 -b 1 -n 10 --device cpu");
    EXPECT_EQ(full.code, 1);
    EXPECT_NE(full.output.find("plus 14 generated tokens (4 warm-up, 10 measured (-n)"), std::string::npos) << full.output;
    EXPECT_NE(full.output.find("exceeds the model's context 32768"), std::string::npos) << full.output;
}

// Mode variants stack (an ablation and a store dtype); a bad one is named with the accepted list.
TEST(Cli, ModeVariantsStack) {
    const Result r = run("bench --shape tiny -d 300 -b 1 -n 2 -r 1 --kv-budget 256 --kv-sink 32 --kv-recent 64 --device cpu "
                         "--kv-mode freekv:corr-off:int8,quest:fp8");
    ASSERT_EQ(r.code, 0) << r.output;
    EXPECT_NE(r.output.find("| freekv:corr-off:int8 | 300 | 1 |"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("| quest:fp8 | 300 | 1 |"), std::string::npos) << r.output;
    const Result bad = run("bench --shape tiny -d 300 -b 1 -n 2 --device cpu --kv-mode freekv:corr-off:int4");
    EXPECT_EQ(bad.code, 1);
    EXPECT_NE(bad.output.find("unknown variant 'int4' (corr-off, no-spec, int8, fp8)"), std::string::npos) << bad.output;
    const Result ablated_quest = run("bench --shape tiny -d 300 -b 1 -n 2 --device cpu --kv-mode quest:int8:no-spec");
    EXPECT_EQ(ablated_quest.code, 1);
    EXPECT_NE(ablated_quest.output.find("only freekv takes an ablation variant"), std::string::npos) << ablated_quest.output;
}

// Ragged batches (design doc 6.2): a batch's context lengths spread evenly from --ragged up to the
// depth; the depth column shows "shortest-longest", JSON adds depth_min; --ragged must be below
// every depth.
TEST(Cli, BenchRaggedBatch) {
    BenchParams p;
    p.ragged_min = 200;
    EXPECT_EQ(bench_length(p, 400, 0, 3), 200);
    EXPECT_EQ(bench_length(p, 400, 1, 3), 300);
    EXPECT_EQ(bench_length(p, 400, 2, 3), 400);
    EXPECT_EQ(bench_length(p, 400, 0, 1), 400) << "a batch of one is not ragged";
    const std::string args = "bench --shape tiny -d 400 -b 1,3 -n 3 -r 1 --kv-budget 256 --kv-sink 32 --kv-recent 64 "
                             "--kv-mode budget-only,freekv --ragged 200 --device cpu";
    const Result r = run(args);
    ASSERT_EQ(r.code, 0) << r.output;
    EXPECT_NE(r.output.find("| freekv | 200-400 | 3 |"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("| freekv | 400 | 1 |"), std::string::npos) << r.output;
    const Result json = run(args + " -o json");
    ASSERT_EQ(json.code, 0) << json.output;
    EXPECT_NE(json.output.find("\"depth\":400,\"depth_min\":200,\"batch\":3"), std::string::npos) << json.output;
    const Result bad = run("bench --shape tiny -d 300 -b 2 --ragged 300 --device cpu");
    EXPECT_EQ(bad.code, 1);
    EXPECT_NE(bad.output.find("--ragged 300 must be below every depth"), std::string::npos) << bad.output;
}

// The GPU bench's memory floor counts the K/V of every token a decode step attends: full attention
// at position 1000 (page 32) attends 1001 tokens; a row that attends nothing adds nothing.
TEST(Cli, BenchMemoryFloorCountsEveryAttendedToken) {
    ModelConfig c;
    c.n_layer = 3, c.n_head_kv = 2, c.head_dim = 64;
    KvModeConfig full;
    full.mode = KvMode::kFull;
    const RowPlan row = plan_decode_row(full.make_budget(), full, true, 0, 1000, false);
    EXPECT_EQ((row.n_attend - 1) * full.page_size + row.fill, 1001);
    RowPlan idle;
    const std::vector<RowPlan> plan{row, idle, row};
    EXPECT_EQ(attended_kv_bytes(plan, full.page_size, c, 2), 2 * 1001 * 3 * 2 * 64 * 2 * 2);
    EXPECT_EQ(attended_kv_bytes(plan, full.page_size, c, 4), 2 * attended_kv_bytes(plan, full.page_size, c, 2));
}

TEST(Cli, TokenizeRoundTrip) {
    auto dir = test::ref_model_dir();
    if (!dir) GTEST_SKIP() << "../shared/models/freekv-ref-28m not found";
    Result r = run("tokenize -m " + dir->string() + " -p 'Hello world!'");
    EXPECT_EQ(r.code, 0);
    EXPECT_EQ(r.output, "41, 497, 80, 1018, 2\n");
    r = run("tokenize -m " + dir->string() + " --decode -p '41, 497, 80, 1018, 2'");
    EXPECT_EQ(r.output, "Hello world!\n");
}

}  // namespace
}  // namespace freekv
