// fuzz/va_space_fuzz.cpp - libFuzzer target: VaSpace against the reference model.
//
// Each input is decoded into a VaSpace's options and then a sequence of
// operations: alloc with any size, alignment and range (absurd ones
// included: zero, overflowing, not powers of two, outside the space, at the
// top of the address space), free, free_lazy and free_lazy_reusable of live,
// lazy, inner and random addresses (reusable neighbours join), reuse_lazy of
// sizes that fit reusable
// areas exactly, with room to spare or not at all, purge, find, info in every
// mode, meminfo, vmallocinfo and for_each_area. Every result is compared with tests/reference_model.hpp,
// the same oracle the model test uses; so is every on_purge call. Any
// difference prints what differed and aborts, which libFuzzer records as a
// crash with the input that caused it.
//
// UVMALLOC_FUZZ_TRACE=1 prints every operation and its result, which turns a
// crash input into a readable reproducer:
//   UVMALLOC_FUZZ_TRACE=1 build-fuzz/fuzz/va_space_fuzz build-fuzz/fuzz-artifacts/crash-...
//
// The decoder never fails: every byte string is a valid program, and short
// inputs are short programs. The first bytes choose the space (small spaces
// and small page sizes make collisions, full spaces and purges likely).
//
//   scripts/fuzz.sh                # build with clang-19 and run for 60 s
//   build-fuzz/fuzz/va_space_fuzz fuzz/corpus -runs=0   # replay the seeds

#include <fuzzer/FuzzedDataProvider.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <uvmalloc/errors.hpp>
#include <uvmalloc/va_space.hpp>

#include "reference_model.hpp"

namespace {

using uvmalloc::Area;
using uvmalloc::AreaInfo;
using uvmalloc::InfoMode;
using uvmalloc::VaSpace;
using uvmalloc::VaSpaceOptions;
using uvmalloc::VmallocInfo;
using Model = uvmalloc::testing::ReferenceModel;

constexpr std::uintptr_t kMaxAddress = std::numeric_limits<std::uintptr_t>::max();
constexpr InfoMode kModes[] = {InfoMode::locked, InfoMode::rcu_walk, InfoMode::counters};
constexpr int kMaxOperations = 400;

[[noreturn]] void mismatch(std::string_view what, const std::string& detail) {
  std::fprintf(stderr, "va_space_fuzz: MISMATCH in %.*s: %s\n", static_cast<int>(what.size()),
               what.data(), detail.c_str());
  std::abort();
}

const bool g_trace = std::getenv("UVMALLOC_FUZZ_TRACE") != nullptr;

void trace(const std::string& call, const std::string& result) {
  if (g_trace) std::fprintf(stderr, "%s -> %s\n", call.c_str(), result.c_str());
}

std::string hex(std::uintptr_t value) {
  char text[24];
  std::snprintf(text, sizeof text, "0x%lx", static_cast<unsigned long>(value));
  return text;
}

std::string describe(const VmallocInfo& info) {
  return "{total " + std::to_string(info.total) + ", used " + std::to_string(info.used) +
         ", largest_chunk " + std::to_string(info.largest_chunk) + "}";
}

std::string describe(const std::vector<Area>& areas) {
  std::string text = "[";
  for (const Area& area : areas) text += " " + hex(area.start) + "-" + hex(area.end);
  return text + " ]";
}

std::string describe(const std::error_code& ec) {
  return ec ? ec.message() + " (" + std::to_string(ec.value()) + ")" : "success";
}

bool is_power_of_two(std::uint64_t x) { return x != 0 && (x & (x - 1)) == 0; }

// The on_purge calls of the space under test, compared with the model's
// purges after every operation. A purge must never run with the writers'
// lock held (on_purge may read the space), so each call also reads it under
// the lock: a deadlock here is a finding (libFuzzer's -timeout).
struct PurgeLog {
  const VaSpace* space = nullptr;
  std::vector<std::vector<Area>> calls;
};
PurgeLog purge_log;

void on_purge(std::span<const Area> merged) {
  if (purge_log.space != nullptr) (void)purge_log.space->info(InfoMode::locked);
  purge_log.calls.emplace_back(merged.begin(), merged.end());
}

// Decoding helpers: each draws one value from a mix of shapes, so plain and
// hostile values are both common.
class Decoder {
 public:
  explicit Decoder(FuzzedDataProvider& in) : in_(in) {}

  VaSpaceOptions options() {
    VaSpaceOptions o;
    switch (in_.ConsumeIntegralInRange<int>(0, 7)) {
      case 0: o.page_size = 1; break;
      case 1: o.page_size = 16; break;
      case 2: o.page_size = 4096; break;
      case 3: o.page_size = std::size_t{1} << in_.ConsumeIntegralInRange<int>(0, 63); break;
      case 4: o.page_size = in_.ConsumeIntegral<std::uint64_t>(); break;  // often not 2^n
      default: o.page_size = 4096; break;
    }
    const std::uint64_t page = o.page_size == 0 ? 1 : o.page_size;
    switch (in_.ConsumeIntegralInRange<int>(0, 5)) {
      case 0: o.start = 0; break;
      case 1: o.start = page * in_.ConsumeIntegralInRange<std::uint64_t>(0, 1 << 20); break;
      case 2: o.start = kMaxAddress - page * in_.ConsumeIntegralInRange<std::uint64_t>(1, 64) + 1; break;
      case 3: o.start = in_.ConsumeIntegral<std::uint64_t>(); break;
      default: o.start = 0x7f0000000000; break;
    }
    const std::uint64_t pages = in_.ConsumeIntegralInRange<std::uint64_t>(0, 256);
    switch (in_.ConsumeIntegralInRange<int>(0, 5)) {
      case 0: o.end = in_.ConsumeIntegral<std::uint64_t>(); break;
      case 1: o.end = o.start - page * pages; break;  // backwards, wraps
      case 2: o.end = kMaxAddress - page + 1; break;  // the highest page-aligned end
      default: o.end = o.start + page * pages; break;  // may wrap: create must refuse
    }
    o.info_mode = kModes[in_.ConsumeIntegralInRange<int>(0, 2)];
    o.lazy_max_pages = in_.ConsumeBool() ? 0 : in_.ConsumeIntegralInRange<std::size_t>(1, 32);
    return o;
  }

  std::size_t size(std::size_t page) {
    switch (in_.ConsumeIntegralInRange<int>(0, 7)) {
      case 0: return 0;
      case 1: return kMaxAddress - in_.ConsumeIntegralInRange<std::size_t>(0, 2 * page);
      case 2: return in_.ConsumeIntegral<std::uint64_t>();
      case 3: return page * in_.ConsumeIntegralInRange<std::size_t>(0, 64) + in_.ConsumeIntegralInRange<std::size_t>(0, 3);
      default: return page * in_.ConsumeIntegralInRange<std::size_t>(1, 8);
    }
  }

  std::size_t align() {
    switch (in_.ConsumeIntegralInRange<int>(0, 7)) {
      case 0: return 0;
      case 1: return in_.ConsumeIntegral<std::uint64_t>();  // rarely a power of two
      case 2: return std::size_t{1} << in_.ConsumeIntegralInRange<int>(0, 63);
      case 3: return std::size_t{1} << in_.ConsumeIntegralInRange<int>(0, 16);
      default: return 1;
    }
  }

  // An address relative to the space: inside, at its edges, or anywhere.
  std::uintptr_t address_near(const Model& model) {
    const std::uintptr_t span = model.end() - model.start();
    switch (in_.ConsumeIntegralInRange<int>(0, 7)) {
      case 0: return in_.ConsumeIntegral<std::uint64_t>();
      case 1: return model.start() - in_.ConsumeIntegralInRange<std::uintptr_t>(0, 2);
      case 2: return model.end() + in_.ConsumeIntegralInRange<std::uintptr_t>(0, 2) - 1;
      default: return model.start() + in_.ConsumeIntegralInRange<std::uintptr_t>(0, span);
    }
  }

  // An address for free/free_lazy/find: usually an area's start, sometimes
  // its inside, its end, a lazily freed one, or anything near the space.
  std::uintptr_t area_address(const Model& model) {
    const std::vector<AreaInfo> areas = model.areas();
    if (areas.empty() || in_.ConsumeIntegralInRange<int>(0, 7) == 0) return address_near(model);
    const AreaInfo& area = areas[in_.ConsumeIntegralInRange<std::size_t>(0, areas.size() - 1)];
    switch (in_.ConsumeIntegralInRange<int>(0, 7)) {
      case 0: return area.start + in_.ConsumeIntegralInRange<std::uintptr_t>(1, area.end - area.start);
      case 1: return area.end - 1;
      case 2: return area.start - 1;
      default: return area.start;
    }
  }

  // A size for reuse_lazy: usually one a reusable area holds (exactly, or
  // with room to spare, or one page too many), else any size.
  std::size_t reuse_size(const Model& model, std::size_t page) {
    const std::vector<Area> reusable = model.reusable_areas();
    if (reusable.empty() || in_.ConsumeIntegralInRange<int>(0, 3) == 0) return size(page);
    const Area& area = reusable[in_.ConsumeIntegralInRange<std::size_t>(0, reusable.size() - 1)];
    const std::size_t bytes = area.end - area.start;
    switch (in_.ConsumeIntegralInRange<int>(0, 3)) {
      case 0: return bytes + page;
      case 1: return in_.ConsumeIntegralInRange<std::size_t>(1, bytes);
      default: return bytes;
    }
  }

  int operation() { return in_.ConsumeIntegralInRange<int>(0, 19); }
  InfoMode mode() { return kModes[in_.ConsumeIntegralInRange<int>(0, 2)]; }
  bool more() const { return in_.remaining_bytes() > 0; }

 private:
  FuzzedDataProvider& in_;
};

class Harness {
 public:
  Harness(std::unique_ptr<VaSpace> space, Model model)
      : space_(std::move(space)), model_(std::move(model)) {
    purge_log.space = space_.get();
  }
  ~Harness() { purge_log = {}; }
  Harness(const Harness&) = delete;
  Harness& operator=(const Harness&) = delete;

  [[nodiscard]] const Model& model() const noexcept { return model_; }

  void alloc(std::size_t size, std::size_t align, std::optional<Area> range) {
    const auto got = range ? space_->alloc(size, align, range->start, range->end)
                           : space_->alloc(size, align);
    const auto want = range ? model_.alloc(size, align, range->start, range->end)
                            : model_.alloc(size, align);
    const std::string call = "alloc(" + hex(size) + ", " + hex(align) +
                             (range ? ", " + hex(range->start) + ", " + hex(range->end) : "") + ")";
    if (got.has_value() != want.has_value() || (got && *got != *want) ||
        (!got && got.error() != make_error_code(want.error())))
      mismatch(call, "space gave " + (got ? hex(*got) : describe(got.error())) +
                         ", model " + (want ? hex(*want) : describe(make_error_code(want.error()))));
    trace(call, got ? hex(*got) : describe(got.error()));
    if (!got) check_error_kind(call, got.error());
    check_purges(call);
  }

  enum class FreeKind { now, lazy, lazy_reusable };
  void free(std::uintptr_t start, FreeKind kind) {
    std::error_code got;
    std::optional<uvmalloc::errc> want;
    const char* name = "free";
    switch (kind) {
      case FreeKind::now: got = space_->free(start); want = model_.free(start); break;
      case FreeKind::lazy:
        name = "free_lazy";
        got = space_->free_lazy(start);
        want = model_.free_lazy(start);
        break;
      case FreeKind::lazy_reusable:
        name = "free_lazy_reusable";
        got = space_->free_lazy_reusable(start);
        want = model_.free_lazy_reusable(start);
        break;
    }
    const std::error_code want_code = want ? make_error_code(*want) : std::error_code{};
    const std::string call = std::string(name) + "(" + hex(start) + ")";
    if (got != want_code) mismatch(call, "space gave " + describe(got) + ", model " + describe(want_code));
    trace(call, describe(got));
    if (got) check_error_kind(call, got);
    check_purges(call);
  }

  void reuse_lazy(std::size_t size) {
    const auto got = space_->reuse_lazy(size);
    const auto want = model_.reuse_lazy(size);
    const std::string call = "reuse_lazy(" + hex(size) + ")";
    const auto text = [](const auto& result) {
      if (result) return describe(std::vector<Area>{result->was}) + (result->joined ? " joined" : "");
      const std::error_code ec = result.error();  // an errc or already an error_code
      return describe(ec);
    };
    if (got.has_value() != want.has_value() ||
        (got && (got->was != want->was || got->joined != want->joined)) ||
        (!got && got.error() != make_error_code(want.error())))
      mismatch(call, "space gave " + text(got) + ", model " + text(want));
    trace(call, text(got));
    if (got) {
      ++reuses_seen_;
      // The front part is live at once, the rest (if any) still is not.
      const std::optional<Area> live = model_.find(got->was.start);
      if (space_->find(got->was.start) != live || space_->find(live->end - 1) != live)
        mismatch(call, "the reused part is not found as live");
      if (live->end < got->was.end && space_->find(live->end).has_value())
        mismatch(call, "the remainder at " + hex(live->end) + " is found as live");
    } else {
      check_error_kind(call, got.error());
    }
    check_purges(call);
  }

  void purge() {
    space_->purge();
    model_.purge();
    trace("purge()", std::to_string(purge_log.calls.size()) + " on_purge call(s)");
    check_purges("purge()");
  }

  void find(std::uintptr_t addr) {
    const auto got = space_->find(addr);
    const auto want = model_.find(addr);
    if (got != want)
      mismatch("find(" + hex(addr) + ")",
               "space gave " + (got ? describe({*got}) : "nullopt") + ", model " +
                   (want ? describe({*want}) : "nullopt"));
  }

  void info(InfoMode mode) {
    const VmallocInfo want = model_.info();
    const VmallocInfo got = space_->info(mode);
    if (got != want) mismatch("info(mode " + std::to_string(static_cast<int>(mode)) + ")",
                              "space " + describe(got) + ", model " + describe(want));
  }

  // Everything a reader can see, and the space's own invariants.
  void check_everything() {
    for (InfoMode mode : kModes) info(mode);
    if (space_->info() != model_.info()) mismatch("info()", describe(space_->info()));
    if (space_->meminfo() != model_.meminfo())
      mismatch("meminfo()", space_->meminfo() + " vs model " + model_.meminfo());
    check_vmallocinfo();
    check_for_each_area();
    for (const Area& area : model_.live_areas()) {
      find(area.start);
      find(area.end - 1);
    }
    for (const Area& area : model_.lazy_areas()) find(area.start);
    if (const std::string problem = space_->check_invariants(); !problem.empty())
      mismatch("check_invariants()", problem);
    if (space_->stats().purges != purges_seen_)
      mismatch("stats().purges", std::to_string(space_->stats().purges) + " vs model " +
                                     std::to_string(purges_seen_));
    if (space_->stats().lazy_reuses != reuses_seen_)
      mismatch("stats().lazy_reuses", std::to_string(space_->stats().lazy_reuses) + " vs model " +
                                          std::to_string(reuses_seen_));
  }

 private:
  // Every uvmalloc error is of our category and is one of the two std::errc.
  static void check_error_kind(const std::string& call, const std::error_code& ec) {
    if (ec.category() != uvmalloc::error_category())
      mismatch(call, "error of a foreign category: " + describe(ec));
    if (ec != std::errc::invalid_argument && ec != std::errc::not_enough_memory)
      mismatch(call, "error is neither invalid_argument nor not_enough_memory: " + describe(ec));
  }

  void check_purges(const std::string& call) {
    auto& want = model_.purges();
    if (purge_log.calls.size() != want.size())
      mismatch(call, "on_purge called " + std::to_string(purge_log.calls.size()) +
                         " times, model purged " + std::to_string(want.size()) + " times");
    for (std::size_t i = 0; i < want.size(); ++i)
      if (purge_log.calls[i] != want[i].merged)
        mismatch(call, "on_purge got " + describe(purge_log.calls[i]) + ", model " +
                           describe(want[i].merged));
    purges_seen_ += want.size();
    want.clear();
    purge_log.calls.clear();
  }

  void check_vmallocinfo() {
    const std::string text = space_->vmallocinfo();
    const std::vector<std::string> lines = model_.vmallocinfo_lines();
    std::size_t at = 0;
    for (const std::string& line : lines) {
      const std::size_t eol = text.find('\n', at);
      if (eol == std::string::npos) mismatch("vmallocinfo()", "missing line " + line);
      const std::string_view got(text.data() + at, eol - at);
      // The contract's fields, then optionally " extra fields of ours".
      if (!got.starts_with(line) || (got.size() > line.size() && got[line.size()] != ' '))
        mismatch("vmallocinfo()", "line '" + std::string(got) + "', model '" + line + "'");
      at = eol + 1;
    }
    if (at != text.size()) mismatch("vmallocinfo()", "extra text: " + text.substr(at));
  }

  void check_for_each_area() {
    std::vector<AreaInfo> got;
    space_->for_each_area([&](const AreaInfo& area) { got.push_back(area); });
    const std::vector<AreaInfo> want = model_.areas();
    bool same = got.size() == want.size();
    for (std::size_t i = 0; same && i < got.size(); ++i)
      same = got[i].start == want[i].start && got[i].end == want[i].end &&
             got[i].lazy == want[i].lazy;
    if (!same)
      mismatch("for_each_area()", std::to_string(got.size()) + " areas, model " +
                                      std::to_string(want.size()));
  }

  std::unique_ptr<VaSpace> space_;
  Model model_;
  std::uint64_t purges_seen_ = 0;
  std::uint64_t reuses_seen_ = 0;
};

// What create() must say about `o`, by the header's rule.
bool options_valid(const VaSpaceOptions& o) {
  return is_power_of_two(o.page_size) && o.start % o.page_size == 0 && o.end % o.page_size == 0 &&
         o.end > o.start;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  FuzzedDataProvider in(data, size);
  Decoder decode(in);
  VaSpaceOptions options = decode.options();
  options.on_purge = on_purge;

  auto created = VaSpace::create(options);
  trace("create(page_size " + hex(options.page_size) + ", [" + hex(options.start) + ", " +
            hex(options.end) + "), lazy_max_pages " + std::to_string(options.lazy_max_pages) + ")",
        created ? "lazy limit " + std::to_string((*created)->lazy_max_pages()) + " pages"
                : describe(created.error()));
  if (created.has_value() != options_valid(options))
    mismatch("create(page_size " + hex(options.page_size) + ", [" + hex(options.start) + ", " +
                 hex(options.end) + "))",
             created ? "accepted bad options" : "refused good options: " + describe(created.error()));
  if (!created) {
    if (created.error() != uvmalloc::errc::bad_options ||
        created.error() != std::errc::invalid_argument)
      mismatch("create()", "wrong error: " + describe(created.error()));
    return 0;
  }
  Model model(options.start, options.end, options.page_size, (*created)->lazy_max_pages());
  Harness harness(std::move(*created), std::move(model));
  const Model& view = harness.model();

  for (int step = 0; step < kMaxOperations && decode.more(); ++step) {
    switch (decode.operation()) {
      case 0: case 1: case 2: case 3:
        harness.alloc(decode.size(options.page_size), decode.align(), std::nullopt);
        break;
      case 4: case 5: {
        const std::uintptr_t vstart = decode.address_near(view);
        const std::uintptr_t vend = decode.address_near(view);
        harness.alloc(decode.size(options.page_size), decode.align(), Area{vstart, vend});
        break;
      }
      case 6: case 7: harness.free(decode.area_address(view), Harness::FreeKind::now); break;
      case 8: case 9: harness.free(decode.area_address(view), Harness::FreeKind::lazy); break;
      case 10: harness.purge(); break;
      case 11: case 12: harness.find(decode.area_address(view)); break;
      case 13: case 14: harness.info(decode.mode()); break;
      case 16: case 17:
        harness.free(decode.area_address(view), Harness::FreeKind::lazy_reusable);
        break;
      case 18: case 19: harness.reuse_lazy(decode.reuse_size(view, options.page_size)); break;
      default: harness.check_everything(); break;
    }
  }
  harness.check_everything();
  return 0;
}
