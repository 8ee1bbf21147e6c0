// selection.h: the arithmetic of page retrieval (design doc 3.3-3.5, 3.7), as pure functions over
// plain arrays: page summaries, scores, group aggregation, top-k, the recall plan against the
// resident set, and the correction test. Policies call these; nothing here owns state or knows
// about threads, streams or CUDA.
// Invariants: all arithmetic is fp32 with a fixed summation order (R7: same inputs, same
// selection); top-k ranks by aggregated score, ties to the smaller page index.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "kv/recall_plan.h"

namespace freekv {

enum class SummaryKind { kMinMax, kCuboid };
enum class GroupAgg { kSoftmaxMean, kMean, kMax };

SummaryKind parse_summary_kind(const std::string& s);  // "minmax" | "cuboid"; Error names --summary
GroupAgg parse_group_agg(const std::string& s);        // "softmax-mean" | "mean" | "max"; Error names --group-agg
const char* summary_kind_name(SummaryKind k);
const char* group_agg_name(GroupAgg g);

/// Summary of one (page, KV head) from its n_rows key vectors (row r at keys + r * row_stride):
/// out[0][d] = U, out[1][d] = L.
void summarize_page(SummaryKind kind, const float* keys, int64_t n_rows, int64_t row_stride, int64_t head_dim, float* out);

/// scores[g][j - first] = sum_i max(q_g[i] * U_j[i], q_g[i] * L_j[i]) for candidate pages
/// j in [first, end); q: [group][head_dim]; summaries: [pages][2][head_dim].
void score_pages(const float* q, int64_t group, int64_t head_dim, const float* summaries, int64_t first, int64_t end,
                 float* scores);

/// One score per page from the group's scores[group][n] (softmax over the n candidates per head
/// for kSoftmaxMean). out: [n].
void aggregate_scores(const float* scores, int64_t group, int64_t n, GroupAgg agg, float* out);

/// The k best pages (first + index), ranked by score, ties to the smaller page; returned ascending.
std::vector<int32_t> top_k_pages(std::span<const float> aggregated, int64_t first, int64_t k);

/// Recall jobs turning the resident middle set into `selected` (both of size k; design doc 3.5):
/// missing pages ascending paired with the slots of evicted pages ascending. resident[s] is the
/// page in middle slot first_middle_slot + s.
void plan_head_recall(int32_t seq, int32_t ikv, std::span<const int32_t> selected, std::span<const int32_t> resident,
                      int64_t first_middle_slot, std::vector<RecallJob>& jobs);

/// Mean over the group's query heads of cos(q[h], q_prev[h]) (fp32, norm product floored at 1e-20).
float group_cosine(const float* q, const float* q_prev, int64_t group, int64_t head_dim);

}  // namespace freekv
