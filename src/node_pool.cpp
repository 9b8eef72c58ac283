// node_pool.cpp - batch retirement through call_rcu (see node_pool.hpp).
#include "node_pool.hpp"

#include <cstddef>

namespace uvmalloc::detail {
void NodePool::grow_locked() {
  auto chunk = std::make_unique<AreaNode[]>(kChunk);
  for (std::size_t i = 0; i + 1 < kChunk; ++i) chunk[i].free_next = &chunk[i + 1];
  chunk[kChunk - 1].free_next = nullptr;
  free_ = &chunk[0];
  chunks_.push_back(std::move(chunk));
}

void NodePool::flush_locked() {
  if (!batch_) return;
  AreaNode* first = batch_;
  batch_ = nullptr;
  batch_size_ = 0;
  // A batch rides on its first node: rcu_head queues the callback,
  // free_next chains the batch, and prev carries the pool. prev is safe to
  // reuse: readers never read it, and the node is off the list.
  first->prev = reinterpret_cast<AreaNode*>(this);
  callbacks_pending_.fetch_add(1, std::memory_order_relaxed);
  rcu::call(&first->rcu_head, &NodePool::batch_done, first);
}

void NodePool::batch_done(rcu::Head* head) {
  AreaNode* first = reinterpret_cast<AreaNode*>(reinterpret_cast<char*>(head) -
                                                offsetof(AreaNode, rcu_head));
  rcu::callback_entered(first);
  auto* pool = reinterpret_cast<NodePool*>(first->prev);
  AreaNode* last = first;
  while (last->free_next) last = last->free_next;
  AreaNode* top = pool->recycled_.load(std::memory_order_relaxed);
  do {
    last->free_next = top;
    // Release: our reads of the batch (and, via the grace period, every
    // reader's) happen before the writer reuses these nodes.
  } while (!pool->recycled_.compare_exchange_weak(top, first, std::memory_order_release,
                                                  std::memory_order_relaxed));
  // Release, and the callback's last touch of the pool: see callbacks_pending().
  pool->callbacks_pending_.fetch_sub(1, std::memory_order_release);
}

}  // namespace uvmalloc::detail
