// area_tree.hpp - one B+tree serving as busy index, free-space index and
// largest-chunk counter.
//
// The kernel keeps two rb-trees (busy areas by address, free blocks augmented
// with the largest block per subtree). We keep one B+tree of the areas on the
// list (live and lazily freed), keyed by start. Free space is implicit: the
// gaps between consecutive areas. Each child slot of an inner node carries a
// summary of its subtree, so:
//
//   * lookup / find(addr)      : descend by key, O(log n);
//   * lowest fit               : descend to the first subtree whose largest
//                                gap can hold the size, O(log n) with page
//                                alignment (see lowest_fit for larger ones);
//   * largest_chunk for info() : the root's largest gap between *live*
//                                areas, so lazily freed areas count as free.
//
//       inner node:  [ child0 | child1 | child2 ]   per slot: lo, hi, gap,
//                        |        |        |                 live_lo, live_hi,
//                      leaf     leaf     leaf                live_gap
//   gaps between entries inside a child are summarised in the slot;
//   gaps between neighbouring children are hi[i-1] .. lo[i], seen by the parent.
//
// Wide nodes keep the tree shallow (4-5 levels at 10^6 areas) and each node's
// keys in one or two cache lines per field, which is what keeps an alloc+free
// pair nearly flat from 10^3 to 10^6 areas.
//
// Locking: every method needs the writers' lock (the tree is never read
// under RCU; readers use AreaList).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "area_list.hpp"

namespace uvmalloc::detail {

// What a subtree (or the whole tree) looks like from outside.
struct GapSummary {
  static constexpr std::uintptr_t kNoLive = UINTPTR_MAX;
  std::uintptr_t lo = 0;       // start of the first area
  std::uintptr_t hi = 0;       // end of the last area
  std::uintptr_t gap = 0;      // largest gap between consecutive areas
  std::uintptr_t live_lo = kNoLive;  // start of the first live area, or kNoLive
  std::uintptr_t live_hi = 0;  // end of the last live area
  std::uintptr_t live_gap = 0; // largest gap between consecutive live areas
  friend bool operator==(const GapSummary&, const GapSummary&) = default;
};

// An allocation request, validated by the caller.
struct FitRequest {
  std::uintptr_t size;        // > 0, multiple of the page size
  std::uintptr_t align;       // power of two >= page size
  std::uintptr_t vstart, vend;  // vstart < vend, inside the space
};

struct AreaRef {
  std::uintptr_t start, end;
  AreaNode* node;
  bool live;
};

class AreaTree {
 public:
  static constexpr int kLeafCap = 16;
  static constexpr int kInnerCap = 16;

  AreaTree() = default;
  ~AreaTree();
  AreaTree(const AreaTree&) = delete;
  AreaTree& operator=(const AreaTree&) = delete;

  // Makes sure the next insert() cannot fail to allocate. May throw
  // std::bad_alloc; nothing changes then.
  void reserve_for_insert();

  // Inserts [start, end) (no overlap; caller checked) and returns the area
  // just before it in address order, or nullptr. Call reserve_for_insert()
  // first: then it does not allocate and cannot throw.
  AreaNode* insert(std::uintptr_t start, std::uintptr_t end, AreaNode* node, bool live) noexcept;

  // Removes the area starting exactly at `start`; its node, or nullptr.
  AreaNode* erase(std::uintptr_t start) noexcept;
  // Removes the area starting exactly at `start` if it is live; what it was.
  std::optional<AreaRef> erase_live(std::uintptr_t start) noexcept;
  // Marks the live area starting exactly at `start` lazily freed; what it was.
  std::optional<AreaRef> mark_lazy(std::uintptr_t start) noexcept;

  // Replaces the area starting exactly at `start` by [start, new_end), held
  // by `node`, live or lazily freed as `live` says. The area may shrink or
  // grow, up to the next area's start. What it was, or nullopt (and nothing
  // changes) when no area starts there or new_end is out of bounds.
  std::optional<AreaRef> reshape(std::uintptr_t start, std::uintptr_t new_end, AreaNode* node,
                                 bool live) noexcept;

  // The area with start <= addr < end.
  [[nodiscard]] std::optional<AreaRef> containing(std::uintptr_t addr) const noexcept;

  // The lowest aligned address a with [a, a + size) inside [vstart, vend)
  // and inside one gap of [space_start, space_end).
  [[nodiscard]] std::optional<std::uintptr_t> lowest_fit(const FitRequest& request,
                                                         std::uintptr_t space_start,
                                                         std::uintptr_t space_end) const noexcept;

  // The largest gap between live areas, counting the ends of the space.
  [[nodiscard]] std::uintptr_t largest_live_gap(std::uintptr_t space_start,
                                                std::uintptr_t space_end) const noexcept;

  [[nodiscard]] std::size_t size() const noexcept { return size_; }

  // Every area in address order (for invariant checks and tests).
  [[nodiscard]] std::vector<AreaRef> entries() const;

  // Structural self-check: order, fill, stored summaries equal recomputed
  // ones, leaf chain. "" when all holds.
  [[nodiscard]] std::string check() const;

 private:
  struct Node {
    bool leaf;
    int count = 0;
    explicit Node(bool is_leaf) : leaf(is_leaf) {}
  };
  struct Leaf : Node {
    Leaf() : Node(true) {}
    std::uintptr_t start[kLeafCap];
    std::uintptr_t end[kLeafCap];
    AreaNode* area[kLeafCap];
    std::uint32_t live_mask = 0;  // bit i: entry i is live
    Leaf* prev = nullptr;
    Leaf* next = nullptr;
  };
  struct Inner : Node {
    Inner() : Node(false) {}
    // Summary of child i, one array per field so scans touch few lines.
    std::uintptr_t lo[kInnerCap];
    std::uintptr_t hi[kInnerCap];
    std::uintptr_t gap[kInnerCap];
    std::uintptr_t live_lo[kInnerCap];
    std::uintptr_t live_hi[kInnerCap];
    std::uintptr_t live_gap[kInnerCap];
    Node* child[kInnerCap];
    // Bit i: child i's live summary differs from its full one (it holds a
    // lazily freed area that matters). 0 lets summaries skip the live pass.
    std::uint32_t live_differs = 0;
  };
  struct PathStep {
    Inner* node;
    int index;
  };
  static constexpr int kMaxHeight = 48;

  static GapSummary summarize(const Node* n) noexcept;
  static GapSummary summarize_leaf(const Leaf* l) noexcept;
  static GapSummary summarize_inner(const Inner* in) noexcept;
  static GapSummary resummarize(const Inner* p, int ci, const GapSummary& before,
                                const GapSummary& p_before) noexcept;
  static void set_slot(Inner* in, int i, const GapSummary& s) noexcept;
  static GapSummary slot(const Inner* in, int i) noexcept;
  static int child_for(const Inner* in, std::uintptr_t key) noexcept;
  static void leaf_insert_at(Leaf* l, int pos, std::uintptr_t s, std::uintptr_t e, AreaNode* a,
                             bool live) noexcept;
  static void leaf_erase_at(Leaf* l, int pos) noexcept;
  static void inner_insert_at(Inner* in, int pos, Node* child, const GapSummary& s) noexcept;
  static void inner_erase_at(Inner* in, int pos) noexcept;

  // Descends to the leaf that holds `key` (or would); fills path.
  Leaf* descend(std::uintptr_t key, PathStep* path, int* depth) const noexcept;
  // The leaf and index of the area starting exactly at `start`, or nullptr.
  Leaf* find_exact(std::uintptr_t start, PathStep* path, int* depth, int* pos) const noexcept;
  static AreaRef ref_at(const Leaf* l, int pos) noexcept;
  // Re-summarises from the leaf up after an in-place change; stops early
  // once a summary is unchanged.
  void fix_up(PathStep* path, int depth, Node* child) noexcept;
  void fix_up_after_insert(PathStep* path, int depth, Node* child, Node* right) noexcept;
  void fix_up_after_erase(PathStep* path, int depth, Node* child) noexcept;
  void merge_with_next(Inner* parent, int index) noexcept;

  Leaf* take_leaf() noexcept;
  Inner* take_inner() noexcept;
  void free_node(Node* n) noexcept;
  void destroy(Node* n) noexcept;

  std::optional<std::uintptr_t> fit_in(const Node* n, const FitRequest& r,
                                       bool* stop) const noexcept;
  std::string check_node(const Node* n, int level, const GapSummary* expected,
                         const Leaf** prev_leaf) const;

  Node* root_ = nullptr;
  int height_ = 0;  // 0: empty; 1: the root is a leaf
  std::size_t size_ = 0;
  GapSummary root_summary_;  // summarize(root_) while non-empty
  // Spare nodes so insert() never allocates (reserve_for_insert).
  std::vector<Leaf*> spare_leaves_;
  std::vector<Inner*> spare_inners_;
};

}  // namespace uvmalloc::detail
