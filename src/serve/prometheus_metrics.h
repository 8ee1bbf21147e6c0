// prometheus_metrics.h: the engine's counters as Prometheus text exposition (GET /metrics).
// Invariant: every metric has HELP and TYPE lines; counters end in _total and only grow.
#pragma once

#include <string>

#include "engine/engine.h"

namespace freekv::serve {

std::string prometheus_text(const EngineMetrics& m);

}  // namespace freekv::serve
