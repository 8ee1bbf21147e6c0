// kv_flags.cpp: registration and validation of the KV-mode flags.
#include "app/kv_flags.h"

#include <sstream>

#include "core/error.h"

namespace freekv::app {

void KvFlags::add_to(CLI::App& cmd) {
    cmd.add_option("--kv-mode", mode, "full, budget-only, streaming, quest, arkvale, freekv (freekv)")
        ->envname("FREEKV_ARG_KV_MODE");
    cmd.add_option("--kv-budget", budget, "tokens attended per layer and KV head, sink and recent included (2048)")
        ->envname("FREEKV_ARG_KV_BUDGET");
    cmd.add_option("--kv-sink", sink, "sink tokens always attended (512)")->envname("FREEKV_ARG_KV_SINK");
    cmd.add_option("--kv-recent", recent, "recent-window tokens, current page included (512)")->envname("FREEKV_ARG_KV_RECENT");
    cmd.add_option("--kv-page-size", page_size, "tokens per page: 16, 32 or 64 (32)")->envname("FREEKV_ARG_KV_PAGE_SIZE");
    cmd.add_option("--corr-threshold", corr_threshold, "correction threshold tau: a number in [-1, 2]; off or 0 turns correction off (0.9)")
        ->envname("FREEKV_ARG_CORR_THRESHOLD");
    cmd.add_flag("--no-spec-retrieval", no_spec, "select with the current query, synchronously, every sparse step")
        ->envname("FREEKV_ARG_NO_SPEC_RETRIEVAL");
    cmd.add_option("--summary", summary, "page summary: minmax or cuboid (mode default)")->envname("FREEKV_ARG_SUMMARY");
    cmd.add_option("--group-agg", group_agg, "GQA group aggregation: softmax-mean, mean or max (mode default)")
        ->envname("FREEKV_ARG_GROUP_AGG");
    cmd.add_option("--recall-impl", recall_impl,
                   "GPU recall: gather (one zero-copy kernel), dma (batched copy-engine copies + a scatter kernel; "
                   "FreeKV's background recall from a worker thread) or per-copy (one cudaMemcpyAsync per page "
                   "block, ArkVale's way); mode default: per-copy for arkvale, gather otherwise")
        ->envname("FREEKV_ARG_RECALL_IMPL");
    cmd.add_option("--corr-sync", corr_sync,
                   "GPU FreeKV correction: device (corrective kernels always launched, no host wait) or host (the "
                   "host reads each layer's flags and launches them only when a head is flagged) (device)")
        ->envname("FREEKV_ARG_CORR_SYNC");
    cmd.add_flag("--kv-check-invariants", check_invariants, "check slot maps and slot data after every sparse step (slow)");
    cmd.add_option("--kv-store-dtype", store_dtype,
                   "CPU KV store: native (the engine's K/V dtype), int8 or fp8 (8 bits per element with a scale "
                   "per key channel and per value token; decoded as pages are recalled) (native)")
        ->envname("FREEKV_ARG_KV_STORE_DTYPE");
}

std::vector<std::pair<std::string, KvModeConfig>> KvFlags::resolve_all() const {
    std::vector<std::pair<std::string, KvModeConfig>> out;
    std::stringstream list(mode);
    std::string name;
    while (std::getline(list, name, ',')) {
        if (name.empty()) continue;
        KvFlags one = *this;
        std::string base = name, variant;
        if (const size_t colon = name.find(':'); colon != std::string::npos) {
            base = name.substr(0, colon);
            variant = name.substr(colon + 1);
        }
        one.mode = base;
        // Variants stack: freekv:corr-off:int8 is corr-off with an int8 store.
        std::istringstream variants(variant);
        std::string v;
        while (std::getline(variants, v, ':')) {
            const bool store_variant = v == "int8" || v == "fp8";
            if (store_variant && base == "full") FREEKV_FAIL("--kv-mode {}: full keeps no CPU store to quantize", name);
            if (!store_variant && base != "freekv")
                FREEKV_FAIL("--kv-mode {}: only freekv takes an ablation variant (freekv:corr-off, freekv:no-spec)", name);
            if (v == "corr-off") one.corr_threshold = "off";
            else if (v == "no-spec") one.no_spec = true;
            else if (store_variant) one.store_dtype = v;
            else FREEKV_FAIL("--kv-mode {}: unknown variant '{}' (corr-off, no-spec, int8, fp8)", name, v);
        }
        out.emplace_back(name, one.resolve());
    }
    if (out.empty()) FREEKV_FAIL("--kv-mode is empty");
    return out;
}

KvModeConfig KvFlags::resolve() const {
    if (mode.find(',') != std::string::npos || mode.find(':') != std::string::npos) {
        const auto all = resolve_all();
        if (all.size() != 1) FREEKV_FAIL("--kv-mode {} lists several modes; this command runs one", mode);
        return all.front().second;
    }
    KvModeConfig c;
    c.mode = parse_kv_mode(mode);
    c.budget = budget;
    c.sink = sink;
    c.recent = recent;
    c.page_size = page_size;
    c.correction_threshold = parse_correction_threshold(corr_threshold);
    c.spec_retrieval = !no_spec;
    if (!summary.empty()) c.summary = parse_summary_kind(summary);
    if (!group_agg.empty()) c.group_agg = parse_group_agg(group_agg);
    c.check_invariants = check_invariants;
    if (!recall_impl.empty()) c.recall_impl = parse_recall_impl(recall_impl);
    if (corr_sync != "device" && corr_sync != "host") FREEKV_FAIL("--corr-sync '{}' must be device or host", corr_sync);
    c.corr_sync_host = corr_sync == "host";
    c.store_code = parse_store_dtype(store_dtype);
    if (c.store_code && c.mode == KvMode::kFull) FREEKV_FAIL("--kv-store-dtype {}: --kv-mode full keeps no CPU store", store_dtype);
    if (c.mode != KvMode::kFull) (void)c.make_budget();  // validates and names the flag
    return c;
}

}  // namespace freekv::app
