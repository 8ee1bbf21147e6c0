// stop_matcher.h: cuts generated text at the first of a request's stop strings, streaming-safe.
// Invariants: push() never returns text that could still turn out to be the start of a stop
// string (it holds such a tail back); once a stop string is seen, stopped() is true and nothing of
// it or after it is ever returned; the concatenation of all push() and flush() results is the text
// up to (excluding) the first stop string, or all of it when none occurs.
#pragma once

#include <string>
#include <vector>

namespace freekv::serve {

class StopMatcher {
public:
    explicit StopMatcher(std::vector<std::string> stops) : stops_(std::move(stops)) {}
    /// Adds generated text; returns what can be sent now.
    std::string push(const std::string& text);
    /// At the end of generation: the held-back tail (empty once stopped).
    std::string flush();
    bool stopped() const { return stopped_; }

private:
    std::vector<std::string> stops_;
    std::string held_;
    bool stopped_ = false;
};

}  // namespace freekv::serve
