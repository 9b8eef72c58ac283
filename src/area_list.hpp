// area_list.hpp - the address-ordered area list that readers walk under RCU.
//
// The twin of the kernel's vmap_area_list, following liburcu rculist's
// protocol with std::atomic links (DESIGN 3, TSan recipe item 1):
//  * updates need the writers' lock;
//  * insert: set the node's own links, then publish it with a release store;
//  * delete: unlink with a release store; never touch the node's own next,
//    so a reader standing on it still reaches the rest of the list; the node
//    is reused only after a grace period (NodePool);
//  * iterate only inside a read-side section (or under the writers' lock),
//    following next with acquire loads.
// Every path through the list visits strictly increasing starts: a link only
// ever points to a node with a larger start, and starts are immutable while a
// node can be reached.
#pragma once

#include <atomic>
#include <cstdint>

#include "rcu.hpp"

namespace uvmalloc::detail {

struct AreaNode {
  // RCU-visible link: release store to publish, acquire load to follow.
  std::atomic<AreaNode*> next{nullptr};
  AreaNode* prev = nullptr;  // writers only
  std::uintptr_t start = 0;  // immutable while reachable by readers
  std::uintptr_t end = 0;
  // kLazy once free_lazy ran. Written under the writers' lock, read by RCU
  // readers: relaxed, because a reader only needs some recent value.
  std::atomic<std::uint32_t> flags{0};
  // Writers only (lock held): in VaSpace's reusable index (and when it was
  // put there, for its order), and whether it was joined from several areas.
  bool reusable = false;
  bool joined = false;
  std::uint64_t reuse_stamp = 0;
  union {
    AreaNode* lazy_next;  // on the lazy list (flags & kLazy)
    AreaNode* free_next;  // in the node pool or a retirement batch
  };
  rcu::Head rcu_head;  // used by the first node of a retirement batch

  static constexpr std::uint32_t kLazy = 1;

  [[nodiscard]] bool lazy() const noexcept {
    return flags.load(std::memory_order_relaxed) & kLazy;
  }
  AreaNode() : lazy_next(nullptr) {}
};

class AreaList {
 public:
  AreaList() = default;
  AreaList(const AreaList&) = delete;
  AreaList& operator=(const AreaList&) = delete;

  // First node, for a walk; acquire so the node's fields are visible.
  [[nodiscard]] AreaNode* first() const noexcept {
    return head_.next.load(std::memory_order_acquire);
  }
  [[nodiscard]] static AreaNode* next(const AreaNode* n) noexcept {
    return n->next.load(std::memory_order_acquire);
  }

  // Inserts `node` right after `pred` (nullptr: at the front). Lock held.
  void insert_after_locked(AreaNode* pred, AreaNode* node) noexcept {
    AreaNode* p = pred ? pred : &head_;
    AreaNode* succ = p->next.load(std::memory_order_relaxed);
    node->next.store(succ, std::memory_order_relaxed);
    node->prev = p;
    if (succ) succ->prev = node;
    // Release: a reader that sees node also sees its start, end and next.
    p->next.store(node, std::memory_order_release);
  }

  // Puts `first` and `second` (in this order, not yet linked) where `old`
  // is, in one release store: a reader sees either old or both. Their starts
  // must lie strictly between old's predecessor's and successor's, first's
  // below second's. old's own next stays intact for readers on it. Lock held.
  void replace_locked(AreaNode* old, AreaNode* first, AreaNode* second) noexcept {
    AreaNode* succ = old->next.load(std::memory_order_relaxed);
    second->next.store(succ, std::memory_order_relaxed);
    second->prev = first;
    first->next.store(second, std::memory_order_relaxed);
    first->prev = old->prev;
    if (succ) succ->prev = second;
    // Release: a reader that sees first also sees both nodes' fields and links.
    old->prev->next.store(first, std::memory_order_release);
  }

  // Puts `node` (not yet linked) where the consecutive nodes first .. last
  // are, in one release store: a reader sees either all of those or node.
  // node's start must lie strictly between first's predecessor's start and
  // last's successor's. The old nodes' own links stay intact for readers on
  // them. Lock held.
  void replace_range_locked(AreaNode* first, AreaNode* last, AreaNode* node) noexcept {
    AreaNode* succ = last->next.load(std::memory_order_relaxed);
    node->next.store(succ, std::memory_order_relaxed);
    node->prev = first->prev;
    if (succ) succ->prev = node;
    // Release: a reader that sees node also sees its fields and next.
    first->prev->next.store(node, std::memory_order_release);
  }

  // Unlinks `node`; its own next stays intact for readers on it. Lock held.
  void remove_locked(AreaNode* node) noexcept {
    AreaNode* succ = node->next.load(std::memory_order_relaxed);
    // Release: succ was published before; keeps the protocol uniform.
    node->prev->next.store(succ, std::memory_order_release);
    if (succ) succ->prev = node->prev;
  }

 private:
  AreaNode head_;  // sentinel: only next is used
};

}  // namespace uvmalloc::detail
