// area_tree.cpp - the B+tree of areas with gap summaries (see area_tree.hpp).
#include "area_tree.hpp"

#include <algorithm>
#include <bit>
#include <cstring>
#include <sstream>

namespace uvmalloc::detail {
namespace {

// The lowest address a in gap [gs, ge) with a aligned and
// [a, a + size) inside [vstart, vend); nullopt when none.
std::optional<std::uintptr_t> fit_gap(std::uintptr_t gs, std::uintptr_t ge,
                                      const FitRequest& r) noexcept {
  const std::uintptr_t lo = std::max(gs, r.vstart);
  const std::uintptr_t hi = std::min(ge, r.vend);
  if (lo >= hi) return std::nullopt;
  const std::uintptr_t a = (lo + (r.align - 1)) & ~(r.align - 1);
  if (a < lo) return std::nullopt;  // aligning up wrapped around
  if (a >= hi || hi - a < r.size) return std::nullopt;
  return a;
}

}  // namespace

AreaTree::~AreaTree() {
  if (root_) destroy(root_);
  for (Leaf* l : spare_leaves_) delete l;
  for (Inner* in : spare_inners_) delete in;
}

void AreaTree::destroy(Node* n) noexcept {
  if (n->leaf) {
    delete static_cast<Leaf*>(n);
    return;
  }
  auto* in = static_cast<Inner*>(n);
  for (int i = 0; i < in->count; ++i) destroy(in->child[i]);
  delete in;
}

/*** Node storage ***/

void AreaTree::reserve_for_insert() {
  // An insert splits at most one leaf and every inner level, and may add a
  // new root: one leaf and height_ inner nodes cover it.
  const std::size_t inners = static_cast<std::size_t>(height_) + 1;
  spare_leaves_.reserve(1);
  spare_inners_.reserve(inners);
  if (spare_leaves_.empty()) spare_leaves_.push_back(new Leaf);
  while (spare_inners_.size() < inners) spare_inners_.push_back(new Inner);
}

AreaTree::Leaf* AreaTree::take_leaf() noexcept {
  Leaf* l = spare_leaves_.back();
  spare_leaves_.pop_back();
  l->count = 0;
  l->live_mask = 0;
  l->prev = l->next = nullptr;
  return l;
}

AreaTree::Inner* AreaTree::take_inner() noexcept {
  Inner* in = spare_inners_.back();
  spare_inners_.pop_back();
  in->count = 0;
  in->live_differs = 0;
  return in;
}

void AreaTree::free_node(Node* n) noexcept {
  // Keep a few spares so churn around a node boundary does not hit new/delete.
  constexpr std::size_t kKeep = 8;
  if (n->leaf) {
    auto* l = static_cast<Leaf*>(n);
    if (l->prev) l->prev->next = l->next;
    if (l->next) l->next->prev = l->prev;
    if (spare_leaves_.size() < kKeep && spare_leaves_.capacity() > spare_leaves_.size()) {
      spare_leaves_.push_back(l);
    } else {
      delete l;
    }
  } else {
    auto* in = static_cast<Inner*>(n);
    if (spare_inners_.size() < kKeep && spare_inners_.capacity() > spare_inners_.size()) {
      spare_inners_.push_back(in);
    } else {
      delete in;
    }
  }
}

/*** Summaries ***/

GapSummary AreaTree::summarize_leaf(const Leaf* l) noexcept {
  GapSummary s;
  const int n = l->count;
  s.lo = l->start[0];
  s.hi = l->end[n - 1];
  for (int i = 1; i < n; ++i) s.gap = std::max(s.gap, l->start[i] - l->end[i - 1]);
  std::uint32_t mask = l->live_mask;
  if (mask == (std::uint32_t{1} << n) - 1) {  // all live: the common case
    s.live_lo = s.lo;
    s.live_hi = s.hi;
    s.live_gap = s.gap;
  } else if (mask) {
    int i = std::countr_zero(mask);
    s.live_lo = l->start[i];
    std::uintptr_t prev_end = l->end[i];
    mask &= mask - 1;
    while (mask) {
      i = std::countr_zero(mask);
      s.live_gap = std::max(s.live_gap, l->start[i] - prev_end);
      prev_end = l->end[i];
      mask &= mask - 1;
    }
    s.live_hi = prev_end;
  }
  return s;
}

GapSummary AreaTree::summarize_inner(const Inner* in) noexcept {
  GapSummary s;
  const int n = in->count;
  s.lo = in->lo[0];
  s.hi = in->hi[n - 1];
  s.gap = in->gap[0];
  for (int i = 1; i < n; ++i) {
    s.gap = std::max({s.gap, in->gap[i], in->lo[i] - in->hi[i - 1]});
  }
  // When every child's live summary equals its full one, so does ours
  // (even if a lazily freed area hides inside without changing a figure).
  if (in->live_differs == 0) {
    s.live_lo = s.lo;
    s.live_hi = s.hi;
    s.live_gap = s.gap;
    return s;
  }
  bool have_live = false;
  std::uintptr_t prev_hi = 0;
  for (int i = 0; i < n; ++i) {
    if (in->live_lo[i] == GapSummary::kNoLive) continue;
    if (have_live) {
      s.live_gap = std::max(s.live_gap, in->live_lo[i] - prev_hi);
    } else {
      s.live_lo = in->live_lo[i];
      have_live = true;
    }
    s.live_gap = std::max(s.live_gap, in->live_gap[i]);
    prev_hi = in->live_hi[i];
  }
  if (have_live) s.live_hi = prev_hi;
  return s;
}

GapSummary AreaTree::summarize(const Node* n) noexcept {
  return n->leaf ? summarize_leaf(static_cast<const Leaf*>(n))
                 : summarize_inner(static_cast<const Inner*>(n));
}

void AreaTree::set_slot(Inner* in, int i, const GapSummary& s) noexcept {
  in->lo[i] = s.lo;
  in->hi[i] = s.hi;
  in->gap[i] = s.gap;
  in->live_lo[i] = s.live_lo;
  in->live_hi[i] = s.live_hi;
  in->live_gap[i] = s.live_gap;
  const std::uint32_t bit = std::uint32_t{1} << i;
  const bool differs = s.live_lo != s.lo || s.live_hi != s.hi || s.live_gap != s.gap;
  in->live_differs = differs ? (in->live_differs | bit) : (in->live_differs & ~bit);
}

GapSummary AreaTree::slot(const Inner* in, int i) noexcept {
  return {in->lo[i], in->hi[i], in->gap[i], in->live_lo[i], in->live_hi[i], in->live_gap[i]};
}

/*** Node edits ***/

int AreaTree::child_for(const Inner* in, std::uintptr_t key) noexcept {
  int i = 1;
  while (i < in->count && in->lo[i] <= key) ++i;
  return i - 1;
}

void AreaTree::leaf_insert_at(Leaf* l, int pos, std::uintptr_t s, std::uintptr_t e, AreaNode* a,
                              bool live) noexcept {
  const int tail = l->count - pos;
  std::memmove(&l->start[pos + 1], &l->start[pos], tail * sizeof(l->start[0]));
  std::memmove(&l->end[pos + 1], &l->end[pos], tail * sizeof(l->end[0]));
  std::memmove(&l->area[pos + 1], &l->area[pos], tail * sizeof(l->area[0]));
  l->start[pos] = s;
  l->end[pos] = e;
  l->area[pos] = a;
  const std::uint32_t below = (std::uint32_t{1} << pos) - 1;
  l->live_mask = (l->live_mask & below) | ((l->live_mask & ~below) << 1) |
                 (live ? std::uint32_t{1} << pos : 0);
  ++l->count;
}

void AreaTree::leaf_erase_at(Leaf* l, int pos) noexcept {
  const int tail = l->count - pos - 1;
  std::memmove(&l->start[pos], &l->start[pos + 1], tail * sizeof(l->start[0]));
  std::memmove(&l->end[pos], &l->end[pos + 1], tail * sizeof(l->end[0]));
  std::memmove(&l->area[pos], &l->area[pos + 1], tail * sizeof(l->area[0]));
  const std::uint32_t below = (std::uint32_t{1} << pos) - 1;
  l->live_mask = (l->live_mask & below) | ((l->live_mask >> 1) & ~below);
  --l->count;
}

void AreaTree::inner_insert_at(Inner* in, int pos, Node* child, const GapSummary& s) noexcept {
  const int tail = in->count - pos;
  for (std::uintptr_t* field : {in->lo, in->hi, in->gap, in->live_lo, in->live_hi, in->live_gap}) {
    std::memmove(&field[pos + 1], &field[pos], tail * sizeof(field[0]));
  }
  std::memmove(&in->child[pos + 1], &in->child[pos], tail * sizeof(in->child[0]));
  const std::uint32_t below = (std::uint32_t{1} << pos) - 1;
  in->live_differs = (in->live_differs & below) | ((in->live_differs & ~below) << 1);
  in->child[pos] = child;
  set_slot(in, pos, s);
  ++in->count;
}

void AreaTree::inner_erase_at(Inner* in, int pos) noexcept {
  const int tail = in->count - pos - 1;
  for (std::uintptr_t* field : {in->lo, in->hi, in->gap, in->live_lo, in->live_hi, in->live_gap}) {
    std::memmove(&field[pos], &field[pos + 1], tail * sizeof(field[0]));
  }
  std::memmove(&in->child[pos], &in->child[pos + 1], tail * sizeof(in->child[0]));
  const std::uint32_t below = (std::uint32_t{1} << pos) - 1;
  in->live_differs = (in->live_differs & below) | ((in->live_differs >> 1) & ~below);
  --in->count;
}

/*** Descent and repair ***/

AreaTree::Leaf* AreaTree::descend(std::uintptr_t key, PathStep* path, int* depth) const noexcept {
  Node* n = root_;
  int d = 0;
  while (!n->leaf) {
    auto* in = static_cast<Inner*>(n);
    const int i = child_for(in, key);
    path[d++] = {in, i};
    n = in->child[i];
  }
  *depth = d;
  return static_cast<Leaf*>(n);
}

// p's summary after its slot ci changed from `before` to its current value,
// given p's summary before that change. O(1) unless the change lowered a
// candidate that may have been p's largest gap, or p holds lazily freed
// areas that matter; then it rescans p.
GapSummary AreaTree::resummarize(const Inner* p, int ci, const GapSummary& before,
                                 const GapSummary& p_before) noexcept {
  if (p->live_differs != 0) return summarize_inner(p);
  const int n = p->count;
  std::uintptr_t gap = p_before.gap;
  bool rescan = false;
  auto candidate = [&](std::uintptr_t was, std::uintptr_t now) {
    if (now >= was) {
      gap = std::max(gap, now);
    } else if (was == p_before.gap) {
      rescan = true;
    }
  };
  candidate(before.gap, p->gap[ci]);
  if (ci > 0 && before.lo != p->lo[ci]) {
    candidate(before.lo - p->hi[ci - 1], p->lo[ci] - p->hi[ci - 1]);
  }
  if (ci + 1 < n && before.hi != p->hi[ci]) {
    candidate(p->lo[ci + 1] - before.hi, p->lo[ci + 1] - p->hi[ci]);
  }
  if (rescan) return summarize_inner(p);
  GapSummary s;
  s.lo = p->lo[0];
  s.hi = p->hi[n - 1];
  s.gap = gap;
  s.live_lo = s.lo;  // no child's live summary differs (live_differs == 0)
  s.live_hi = s.hi;
  s.live_gap = s.gap;
  return s;
}

void AreaTree::fix_up(PathStep* path, int depth, Node* child) noexcept {
  GapSummary cs = summarize(child);
  for (int l = depth - 1; l >= 0; --l) {
    Inner* p = path[l].node;
    const int ci = path[l].index;
    const GapSummary before = slot(p, ci);
    if (before == cs) return;  // nothing above changes
    set_slot(p, ci, cs);
    const GapSummary p_before = l > 0 ? slot(path[l - 1].node, path[l - 1].index) : root_summary_;
    cs = resummarize(p, ci, before, p_before);
  }
  root_summary_ = cs;
}

void AreaTree::fix_up_after_insert(PathStep* path, int depth, Node* child, Node* right) noexcept {
  for (int l = depth - 1; l >= 0; --l) {
    if (!right) {
      fix_up(path, l + 1, child);
      return;
    }
    Inner* p = path[l].node;
    const int ci = path[l].index;
    set_slot(p, ci, summarize(child));
    const GapSummary rs = summarize(right);
    Node* new_right = nullptr;
    if (p->count == kInnerCap) {
      Inner* pr = take_inner();
      constexpr int half = kInnerCap / 2;
      for (int i = half; i < kInnerCap; ++i) inner_insert_at(pr, i - half, p->child[i], slot(p, i));
      p->count = half;
      p->live_differs &= (std::uint32_t{1} << half) - 1;
      if (ci + 1 > half) {
        inner_insert_at(pr, ci + 1 - half, right, rs);
      } else {
        inner_insert_at(p, ci + 1, right, rs);
      }
      new_right = pr;
    } else {
      inner_insert_at(p, ci + 1, right, rs);
    }
    child = p;
    right = new_right;
  }
  if (right) {  // the root split: grow by one level
    Inner* root = take_inner();
    inner_insert_at(root, 0, root_, summarize(root_));
    inner_insert_at(root, 1, right, summarize(right));
    root_ = root;
    ++height_;
  }
  root_summary_ = summarize(root_);
}

// Appends child index+1 of `parent` to child index, frees it and drops its slot.
void AreaTree::merge_with_next(Inner* parent, int index) noexcept {
  Node* left = parent->child[index];
  Node* right = parent->child[index + 1];
  if (left->leaf) {
    auto* l = static_cast<Leaf*>(left);
    auto* r = static_cast<Leaf*>(right);
    for (int i = 0; i < r->count; ++i) {
      leaf_insert_at(l, l->count, r->start[i], r->end[i], r->area[i], (r->live_mask >> i) & 1);
    }
  } else {
    auto* l = static_cast<Inner*>(left);
    auto* r = static_cast<Inner*>(right);
    for (int i = 0; i < r->count; ++i) inner_insert_at(l, l->count, r->child[i], slot(r, i));
  }
  free_node(right);
  inner_erase_at(parent, index + 1);
  set_slot(parent, index, summarize(left));
}

void AreaTree::fix_up_after_erase(PathStep* path, int depth, Node* child) noexcept {
  for (int l = depth - 1; l >= 0; --l) {
    Inner* p = path[l].node;
    const int ci = path[l].index;
    if (child->count == 0) {
      free_node(child);
      inner_erase_at(p, ci);
      child = p;
      continue;
    }
    const int cap = child->leaf ? kLeafCap : kInnerCap;
    if (child->count < cap / 4) {
      // Merge with a neighbour when both fit in three quarters of a node,
      // leaving room so the next insert does not split it right away.
      const int room = cap * 3 / 4;
      if (ci > 0 && p->child[ci - 1]->count + child->count <= room) {
        merge_with_next(p, ci - 1);
        child = p;
        continue;
      }
      if (ci + 1 < p->count && p->child[ci + 1]->count + child->count <= room) {
        merge_with_next(p, ci);
        child = p;
        continue;
      }
    }
    fix_up(path, l + 1, child);
    return;
  }
  if (root_->count == 0) {
    free_node(root_);
    root_ = nullptr;
    height_ = 0;
    root_summary_ = {};
    return;
  }
  while (!root_->leaf && root_->count == 1) {
    auto* old = static_cast<Inner*>(root_);
    root_ = old->child[0];
    free_node(old);
    --height_;
  }
  root_summary_ = summarize(root_);
}

/*** Public operations ***/

AreaNode* AreaTree::insert(std::uintptr_t start, std::uintptr_t end, AreaNode* node,
                           bool live) noexcept {
  ++size_;
  if (!root_) {
    Leaf* l = take_leaf();
    leaf_insert_at(l, 0, start, end, node, live);
    root_ = l;
    height_ = 1;
    root_summary_ = summarize_leaf(l);
    return nullptr;
  }
  PathStep path[kMaxHeight];
  int depth = 0;
  Leaf* leaf = descend(start, path, &depth);
  int pos = 0;
  while (pos < leaf->count && leaf->start[pos] < start) ++pos;
  AreaNode* pred = pos > 0       ? leaf->area[pos - 1]
                   : leaf->prev ? leaf->prev->area[leaf->prev->count - 1]
                                : nullptr;
  Node* right = nullptr;
  if (leaf->count == kLeafCap) {
    Leaf* r = take_leaf();
    constexpr int half = kLeafCap / 2;
    for (int i = half; i < kLeafCap; ++i) {
      leaf_insert_at(r, i - half, leaf->start[i], leaf->end[i], leaf->area[i],
                     (leaf->live_mask >> i) & 1);
    }
    leaf->count = half;
    leaf->live_mask &= (std::uint32_t{1} << half) - 1;
    r->next = leaf->next;
    if (r->next) r->next->prev = r;
    r->prev = leaf;
    leaf->next = r;
    if (pos > half) {
      leaf_insert_at(r, pos - half, start, end, node, live);
    } else {
      leaf_insert_at(leaf, pos, start, end, node, live);
    }
    right = r;
  } else {
    leaf_insert_at(leaf, pos, start, end, node, live);
  }
  fix_up_after_insert(path, depth, leaf, right);
  return pred;
}

AreaTree::Leaf* AreaTree::find_exact(std::uintptr_t start, PathStep* path, int* depth,
                                     int* pos) const noexcept {
  if (!root_) return nullptr;
  Leaf* leaf = descend(start, path, depth);
  int i = 0;
  while (i < leaf->count && leaf->start[i] < start) ++i;
  if (i == leaf->count || leaf->start[i] != start) return nullptr;
  *pos = i;
  return leaf;
}

AreaRef AreaTree::ref_at(const Leaf* l, int pos) noexcept {
  return {l->start[pos], l->end[pos], l->area[pos], ((l->live_mask >> pos) & 1) != 0};
}

AreaNode* AreaTree::erase(std::uintptr_t start) noexcept {
  PathStep path[kMaxHeight];
  int depth = 0, pos = 0;
  Leaf* leaf = find_exact(start, path, &depth, &pos);
  if (!leaf) return nullptr;
  AreaNode* node = leaf->area[pos];
  leaf_erase_at(leaf, pos);
  --size_;
  fix_up_after_erase(path, depth, leaf);
  return node;
}

std::optional<AreaRef> AreaTree::erase_live(std::uintptr_t start) noexcept {
  PathStep path[kMaxHeight];
  int depth = 0, pos = 0;
  Leaf* leaf = find_exact(start, path, &depth, &pos);
  if (!leaf || !((leaf->live_mask >> pos) & 1)) return std::nullopt;
  const AreaRef ref = ref_at(leaf, pos);
  leaf_erase_at(leaf, pos);
  --size_;
  fix_up_after_erase(path, depth, leaf);
  return ref;
}

std::optional<AreaRef> AreaTree::mark_lazy(std::uintptr_t start) noexcept {
  PathStep path[kMaxHeight];
  int depth = 0, pos = 0;
  Leaf* leaf = find_exact(start, path, &depth, &pos);
  if (!leaf || !((leaf->live_mask >> pos) & 1)) return std::nullopt;
  const AreaRef ref = ref_at(leaf, pos);
  leaf->live_mask &= ~(std::uint32_t{1} << pos);
  fix_up(path, depth, leaf);
  return ref;
}

std::optional<AreaRef> AreaTree::reshape(std::uintptr_t start, std::uintptr_t new_end,
                                         AreaNode* node, bool live) noexcept {
  PathStep path[kMaxHeight];
  int depth = 0, pos = 0;
  Leaf* leaf = find_exact(start, path, &depth, &pos);
  if (!leaf || new_end <= start) return std::nullopt;
  const Leaf* next_leaf = pos + 1 < leaf->count ? leaf : leaf->next;
  const int next_pos = pos + 1 < leaf->count ? pos + 1 : 0;
  if (next_leaf && next_leaf->count > 0 && new_end > next_leaf->start[next_pos]) return std::nullopt;
  const AreaRef ref = ref_at(leaf, pos);
  leaf->end[pos] = new_end;
  leaf->area[pos] = node;
  if (live) {
    leaf->live_mask |= std::uint32_t{1} << pos;
  } else {
    leaf->live_mask &= ~(std::uint32_t{1} << pos);
  }
  fix_up(path, depth, leaf);
  return ref;
}

std::optional<AreaRef> AreaTree::containing(std::uintptr_t addr) const noexcept {
  if (!root_ || addr < root_summary_.lo || addr >= root_summary_.hi) return std::nullopt;
  const Node* n = root_;
  while (!n->leaf) {
    auto* in = static_cast<const Inner*>(n);
    n = in->child[child_for(in, addr)];
  }
  auto* leaf = static_cast<const Leaf*>(n);
  int pos = leaf->count - 1;
  while (pos >= 0 && leaf->start[pos] > addr) --pos;
  if (pos < 0 || addr >= leaf->end[pos]) return std::nullopt;
  return ref_at(leaf, pos);
}

/*** Lowest fit ***/

// In-order search of the gaps inside n. With page alignment the first
// subtree whose largest gap holds `size` always has a fit, so the descent
// never backs up. With larger alignment a gap can be long enough and still
// miss once aligned; the search then backs up to the next candidate, which
// keeps the answer exact (the lowest) at the cost of visiting such gaps
// (the adversarial case in docs/BENCHMARKS.md).
std::optional<std::uintptr_t> AreaTree::fit_in(const Node* n, const FitRequest& r,
                                               bool* stop) const noexcept {
  if (n->leaf) {
    auto* l = static_cast<const Leaf*>(n);
    for (int i = 1; i < l->count; ++i) {
      const std::uintptr_t gs = l->end[i - 1];
      if (gs >= r.vend) {
        *stop = true;
        return std::nullopt;
      }
      const std::uintptr_t ge = l->start[i];
      if (ge - gs >= r.size && ge > r.vstart) {
        if (auto a = fit_gap(gs, ge, r)) return a;
      }
    }
    return std::nullopt;
  }
  auto* in = static_cast<const Inner*>(n);
  for (int i = 0; i < in->count; ++i) {
    if (i > 0) {
      const std::uintptr_t gs = in->hi[i - 1];
      if (gs >= r.vend) {
        *stop = true;
        return std::nullopt;
      }
      const std::uintptr_t ge = in->lo[i];
      if (ge - gs >= r.size && ge > r.vstart) {
        if (auto a = fit_gap(gs, ge, r)) return a;
      }
    }
    if (in->lo[i] >= r.vend) {
      *stop = true;
      return std::nullopt;
    }
    if (in->gap[i] >= r.size && in->hi[i] > r.vstart) {
      if (auto a = fit_in(in->child[i], r, stop)) return a;
      if (*stop) return std::nullopt;
    }
  }
  return std::nullopt;
}

std::optional<std::uintptr_t> AreaTree::lowest_fit(const FitRequest& r, std::uintptr_t space_start,
                                                   std::uintptr_t space_end) const noexcept {
  if (!root_) return fit_gap(space_start, space_end, r);
  if (auto a = fit_gap(space_start, root_summary_.lo, r)) return a;
  if (root_summary_.lo >= r.vend) return std::nullopt;
  if (root_summary_.gap >= r.size && root_summary_.hi > r.vstart) {
    bool stop = false;
    if (auto a = fit_in(root_, r, &stop)) return a;
    if (stop) return std::nullopt;
  }
  return fit_gap(root_summary_.hi, space_end, r);
}

std::uintptr_t AreaTree::largest_live_gap(std::uintptr_t space_start,
                                          std::uintptr_t space_end) const noexcept {
  if (!root_ || root_summary_.live_lo == GapSummary::kNoLive) return space_end - space_start;
  return std::max({root_summary_.live_gap, root_summary_.live_lo - space_start,
                   space_end - root_summary_.live_hi});
}

/*** Inspection ***/

std::vector<AreaRef> AreaTree::entries() const {
  std::vector<AreaRef> out;
  out.reserve(size_);
  if (!root_) return out;
  const Node* n = root_;
  while (!n->leaf) n = static_cast<const Inner*>(n)->child[0];
  for (auto* l = static_cast<const Leaf*>(n); l; l = l->next) {
    for (int i = 0; i < l->count; ++i) {
      out.push_back(ref_at(l, i));
    }
  }
  return out;
}

std::string AreaTree::check_node(const Node* n, int level, const GapSummary* expected,
                                 const Leaf** prev_leaf) const {
  std::ostringstream err;
  if (n->count < 1) return "empty node in tree";
  if (expected && !(*expected == summarize(n))) {
    err << "stored summary differs from recomputed at level " << level;
    return err.str();
  }
  if (n->leaf) {
    auto* l = static_cast<const Leaf*>(n);
    if (level != height_) return "leaves at different depths";
    if (l->count > kLeafCap) return "leaf over capacity";
    if (l->prev != *prev_leaf) return "leaf chain prev link broken";
    if (*prev_leaf && (*prev_leaf)->next != l) return "leaf chain next link broken";
    if ((l->live_mask >> l->count) != 0) return "live bits beyond leaf count";
    for (int i = 0; i < l->count; ++i) {
      if (l->end[i] <= l->start[i]) return "empty or inverted area in tree";
      if (i > 0 && l->start[i] < l->end[i - 1]) return "areas overlap or out of order in leaf";
    }
    if (*prev_leaf && (*prev_leaf)->end[(*prev_leaf)->count - 1] > l->start[0]) {
      return "areas overlap or out of order across leaves";
    }
    *prev_leaf = l;
    return {};
  }
  auto* in = static_cast<const Inner*>(n);
  if (in->count > kInnerCap) return "inner node over capacity";
  for (int i = 0; i < kInnerCap; ++i) {
    const bool differs = i < in->count && (in->live_lo[i] != in->lo[i] ||
                                           in->live_hi[i] != in->hi[i] ||
                                           in->live_gap[i] != in->gap[i]);
    if (differs != (((in->live_differs >> i) & 1) != 0)) return "live_differs mask stale";
  }
  for (int i = 0; i < in->count; ++i) {
    const GapSummary s = slot(in, i);
    std::string e = check_node(in->child[i], level + 1, &s, prev_leaf);
    if (!e.empty()) return e;
  }
  return {};
}

std::string AreaTree::check() const {
  if (!root_) return size_ == 0 && height_ == 0 ? "" : "empty tree with size or height";
  if (!(root_summary_ == summarize(root_))) return "root summary stale";
  const Leaf* prev = nullptr;
  std::string e = check_node(root_, 1, nullptr, &prev);
  if (!e.empty()) return e;
  if (prev->next) return "leaf chain continues past the last leaf";
  if (entries().size() != size_) return "size differs from entry count";
  return {};
}

}  // namespace uvmalloc::detail
