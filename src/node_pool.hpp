// node_pool.hpp - area nodes, recycled after a grace period in batches.
//
// Deferred release is a cost to engineer (DESIGN 3): a call_rcu per removed
// node halved a writer's rate in the prototype, because liburcu's worker
// thread then frees what the writer allocated. Here removed nodes collect in
// a batch of kBatch; one call_rcu retires the whole batch; its callback
// pushes the nodes onto a lock-free stack, and the writer takes that stack
// back in one exchange when its own free list runs dry. Nodes are never
// returned to the system before the pool is destroyed.
//
// Locking: get(), retire() and flush() need the writers' lock. The callback
// runs on liburcu's worker and touches only recycled_. The destructor needs
// rcu::barrier() to have run after the last flush().
#pragma once

#include <atomic>
#include <cstddef>
#include <memory>
#include <vector>

#include "area_list.hpp"

namespace uvmalloc::detail {

class NodePool {
 public:
  static constexpr std::size_t kChunk = 256;  // nodes per allocation
  static constexpr std::size_t kBatch = 64;   // retirements per call_rcu

  NodePool() = default;
  NodePool(const NodePool&) = delete;
  NodePool& operator=(const NodePool&) = delete;

  // A node with links and flags reset. Lock held. May throw std::bad_alloc
  // (nothing changes then).
  AreaNode* get_locked() {
    if (!free_) {
      // Acquire: pairs with the callback's release push, so the nodes'
      // last reader accesses happen before our reuse.
      free_ = recycled_.exchange(nullptr, std::memory_order_acquire);
      if (!free_) grow_locked();
    }
    AreaNode* n = free_;
    free_ = n->free_next;
    n->next.store(nullptr, std::memory_order_relaxed);
    n->prev = nullptr;
    n->flags.store(0, std::memory_order_relaxed);
    n->reusable = false;
    n->joined = false;
    n->lazy_next = nullptr;
    ++in_use_;
    return n;
  }

  // A node unlinked from the list; reused after a grace period. Lock held.
  void retire_locked(AreaNode* n) {
    n->free_next = batch_;
    batch_ = n;
    --in_use_;
    if (++batch_size_ == kBatch) flush_locked();
  }

  // Sends the current batch to call_rcu. Lock held.
  void flush_locked();

  [[nodiscard]] std::size_t in_use() const noexcept { return in_use_; }

  // Batches sent to call_rcu whose callback has not finished. Acquire: once
  // it reads 0, every callback's last touch of the pool happened before.
  [[nodiscard]] std::size_t callbacks_pending() const noexcept {
    return callbacks_pending_.load(std::memory_order_acquire);
  }

 private:
  static void batch_done(rcu::Head* head);
  void grow_locked();

  AreaNode* free_ = nullptr;       // ready to reuse; lock held
  AreaNode* batch_ = nullptr;      // retired, not yet sent to call_rcu; lock held
  std::size_t batch_size_ = 0;     // lock held
  std::size_t in_use_ = 0;         // lock held
  std::vector<std::unique_ptr<AreaNode[]>> chunks_;  // lock held
  std::atomic<AreaNode*> recycled_{nullptr};  // pushed by callbacks, taken by get_locked
  std::atomic<std::size_t> callbacks_pending_{0};
};

}  // namespace uvmalloc::detail
