// A byte vector whose new elements are left uninitialized.
//
// std::vector<uint8_t>(n) zero-fills, which costs a memset (and the page
// faults of touching every page) for buffers that are overwritten whole
// right away: a network read's destination, a decompression's output. On
// 8 P2P nodes starting python3 together that memset was ~5 % of all CPU.
// Use UninitBytes only where every byte is written before it is read.
#pragma once

#include <cstdint>
#include <memory>
#include <new>
#include <type_traits>
#include <utility>
#include <vector>

namespace nydus {

template <class T, class Base = std::allocator<T>>
class DefaultInitAllocator : public Base {
 public:
  template <class U>
  struct rebind {
    using other = DefaultInitAllocator<U, typename std::allocator_traits<Base>::template rebind_alloc<U>>;
  };
  using Base::Base;

  // Value-initialization (vector(n), resize(n)) becomes default-
  // initialization: nothing is written for trivial types.
  template <class U>
  void construct(U* p) noexcept(std::is_nothrow_default_constructible_v<U>) {
    ::new (static_cast<void*>(p)) U;
  }
  template <class U, class... Args>
  void construct(U* p, Args&&... args) {
    std::allocator_traits<Base>::construct(static_cast<Base&>(*this), p, std::forward<Args>(args)...);
  }
};

using UninitBytes = std::vector<uint8_t, DefaultInitAllocator<uint8_t>>;

}  // namespace nydus
