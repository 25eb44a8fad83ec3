// A first-come, first-served mutex. An engine holds it for a whole training call and hands it
// over between steps when another thread waits: with a plain std::mutex the trainer would take
// it straight back and a predict() from another thread could wait for the whole epoch.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>

namespace fastmlp {

class FairMutex {
 public:
  void lock() {
    std::unique_lock<std::mutex> guard(m_);
    const uint64_t ticket = next_ticket_.fetch_add(1, std::memory_order_relaxed);
    cv_.wait(guard, [&] { return now_serving_.load(std::memory_order_relaxed) == ticket; });
  }
  void unlock() {
    {
      std::lock_guard<std::mutex> guard(m_);
      now_serving_.fetch_add(1, std::memory_order_relaxed);
    }
    cv_.notify_all();
  }
  // True when a thread waits for the holder (to be read by the holder only).
  bool contended() const {
    return next_ticket_.load(std::memory_order_relaxed) - now_serving_.load(std::memory_order_relaxed) > 1;
  }

 private:
  std::mutex m_;
  std::condition_variable cv_;
  std::atomic<uint64_t> next_ticket_{0}, now_serving_{0};
};

}  // namespace fastmlp
