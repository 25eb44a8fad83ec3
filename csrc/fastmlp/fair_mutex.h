// A first-come, first-served mutex. An engine holds it for a whole training call and hands it
// over between steps when another thread waits: with a plain std::mutex the trainer would take
// it straight back and a predict() from another thread could wait for the whole epoch.
// Locking it again from the thread that holds it (a Python signal handler that calls the model
// while that thread is inside the engine) throws instead of deadlocking.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <stdexcept>
#include <thread>

namespace fastmlp {

class FairMutex {
 public:
  void lock() {
    std::unique_lock<std::mutex> guard(m_);
    if (owner_ == std::this_thread::get_id())
      throw std::logic_error(
          "the model was called from inside one of its own calls in the same thread (e.g. from a signal "
          "handler during fit, evaluate or predict); call it after that call returns");
    const uint64_t ticket = next_ticket_.fetch_add(1, std::memory_order_relaxed);
    cv_.wait(guard, [&] { return now_serving_.load(std::memory_order_relaxed) == ticket; });
    owner_ = std::this_thread::get_id();
  }
  void unlock() {
    {
      std::lock_guard<std::mutex> guard(m_);
      owner_ = std::thread::id();
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
  std::thread::id owner_;  // guarded by m_
};

}  // namespace fastmlp
