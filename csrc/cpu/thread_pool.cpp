// The worker threads behind parallel_for (thread_pool.h says why they are not OpenMP's).
#include "cpu/thread_pool.h"

#include "cpu/denormals.h"

#include <sched.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace fastmlp::cpu {
namespace {

constexpr int kSpinMicroseconds = 20;    // then yield the core between checks
constexpr int kAwakeMicroseconds = 1000;  // then sleep on the condition variable
// The caller waits this long for the workers' parts awake before sleeping on done_: parts of
// one job end within microseconds of each other, and a futex sleep and wake-up costs as much.
constexpr int kJoinSpinMicroseconds = 50;

// A pause is about 64 cycles on Zen 2 and later (140 on Skylake-X), so the spins below look
// every few pauses: with 64 per look a worker saw a new job up to ~1 us late, which a one-row
// batch step of ~15 us, with two parallel regions, paid twice.
inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

int default_threads() {
  cpu_set_t set;  // the cores this process may use (a container or taskset may allow fewer)
  if (sched_getaffinity(0, sizeof set, &set) == 0) return std::max(1, CPU_COUNT(&set));
  return std::max(1u, std::thread::hardware_concurrency());
}

class Pool {
 public:
  ~Pool() { stop_workers(); }

  void set_threads(int n) {
    std::lock_guard<std::mutex> job(job_mutex_);  // not while a job runs
    stop_workers();
    threads_ = std::max(1, n);
  }
  int threads() const { return threads_.load(std::memory_order_relaxed); }

  void run(int parts, const std::function<void(int)>& f) {
    std::unique_lock<std::mutex> job(job_mutex_, std::try_to_lock);
    if (!job.owns_lock()) {  // the workers are busy with another thread's job
      for (int p = 0; p < parts; ++p) f(p);
      return;
    }
    start_workers();
    Job j;
    bool sleepers;
    {
      std::lock_guard<std::mutex> g(m_);
      j = {&f, parts, generation_.load(std::memory_order_relaxed) + 1, denormal_mode()};
      job_ = j;
      unfinished_ = parts - 1;
      error_ = nullptr;
      // Claims carry the job's generation, so a worker still finishing an earlier job can never
      // take a part of this one by mistake.
      claim_.store((j.generation << 32) | 1u, std::memory_order_release);
      generation_.store(j.generation, std::memory_order_release);
      sleepers = sleeping_ > 0;
    }
    if (sleepers) wake_.notify_all();
    run_part(j, 0);
    work(j);  // the caller takes the parts no worker has started yet
    const auto start = std::chrono::steady_clock::now();
    while (unfinished_.load(std::memory_order_acquire) != 0 &&
           std::chrono::steady_clock::now() - start < std::chrono::microseconds(kJoinSpinMicroseconds))
      for (int i = 0; i < 4; ++i) cpu_relax();
    std::unique_lock<std::mutex> g(m_);
    done_.wait(g, [&] { return unfinished_.load(std::memory_order_relaxed) == 0; });
    if (error_) std::rethrow_exception(error_);
  }

 private:
  struct Job {
    const std::function<void(int)>* f = nullptr;
    int parts = 0;
    uint64_t generation = 0;
    uint32_t denormal_mode = 0;  // the caller's (denormals.h): its parts compute alike on every thread
  };

  void run_part(const Job& j, int p) {
    try {
      (*j.f)(p);
    } catch (...) {
      std::lock_guard<std::mutex> g(m_);
      if (!error_) error_ = std::current_exception();
    }
  }

  // Runs unclaimed parts 1..parts-1 of job j until none is left. The job (and f) stays alive
  // until every claimed part has finished: run() waits for unfinished_ to reach 0.
  void work(const Job& j) {
    for (;;) {
      // Compare-and-swap, not fetch_add: a worker late from an earlier job must not use up a part
      // of this one that it will not run.
      uint64_t c = claim_.load(std::memory_order_acquire);
      do {
        if ((c >> 32) != (j.generation & 0xffffffffu) || int(c & 0xffffffffu) >= j.parts) return;
      } while (!claim_.compare_exchange_weak(c, c + 1, std::memory_order_acq_rel, std::memory_order_acquire));
      run_part(j, int(c & 0xffffffffu));
      std::lock_guard<std::mutex> g(m_);
      if (--unfinished_ == 0) done_.notify_one();
    }
  }

  void worker_loop() {
    uint64_t seen = 0;
    uint32_t mode = denormal_mode();
    for (;;) {
      // Wait for the next job awake for a while before sleeping: a training step's GEMMs are
      // tens to hundreds of microseconds apart, and waking a sleeping thread on the 2-core VM
      // took long enough that 784-100-10 at batch 100 gained nothing from a second thread
      // (4.45 us per row on 1 thread, 4.2-4.6 on 2 with a 50 us spin, 3.75 with 500 us). After
      // the first microseconds the wait yields the core, so a busy process wanting it gets it.
      const auto start = std::chrono::steady_clock::now();
      for (;;) {
        if (generation_.load(std::memory_order_acquire) != seen || stopping_.load(std::memory_order_relaxed)) break;
        const auto waited = std::chrono::steady_clock::now() - start;
        if (waited > std::chrono::microseconds(kAwakeMicroseconds)) break;
        if (waited > std::chrono::microseconds(kSpinMicroseconds)) {
          sched_yield();
        } else {
          for (int i = 0; i < 8; ++i) cpu_relax();
        }
      }
      Job j;
      {
        std::unique_lock<std::mutex> g(m_);
        ++sleeping_;
        wake_.wait(g, [&] { return stopping_ || generation_.load(std::memory_order_relaxed) != seen; });
        --sleeping_;
        if (stopping_) return;
        seen = generation_.load(std::memory_order_relaxed);
        j = job_;
      }
      if (j.denormal_mode != mode) set_denormal_mode(mode = j.denormal_mode);
      work(j);
    }
  }

  void start_workers() {
    const int wanted = threads() - 1;
    if (int(workers_.size()) == wanted) return;
    stop_workers();
    stopping_ = false;
    for (int i = 0; i < wanted; ++i) workers_.emplace_back([this] { worker_loop(); });
  }

  void stop_workers() {
    {
      std::lock_guard<std::mutex> g(m_);
      stopping_ = true;
    }
    wake_.notify_all();
    for (auto& w : workers_) w.join();
    workers_.clear();
  }

  std::atomic<int> threads_{default_threads()};
  std::mutex job_mutex_;  // one job at a time
  std::mutex m_;
  std::condition_variable wake_, done_;
  std::vector<std::thread> workers_;
  Job job_;                       // the current job (guarded by m_)
  std::atomic<uint64_t> claim_{0};  // generation << 32 | next unclaimed part
  std::atomic<int> unfinished_{0};  // parts 1.. of the current job not finished yet (written under m_)
  std::atomic<uint64_t> generation_{0};  // written under m_, read by spinning workers without it
  int sleeping_ = 0;                      // workers waiting on wake_ (guarded by m_)
  std::atomic<bool> stopping_{false};  // written under m_, read by spinning workers without it
  std::exception_ptr error_;
};

Pool& pool() {
  // Never destroyed: workers must not be joined while the process exits from another static
  // destructor (they simply end with the process).
  static Pool* p = new Pool;
  return *p;
}

}  // namespace

void set_pool_threads(int n) { pool().set_threads(n); }
int pool_threads() { return pool().threads(); }
void run_parts(int parts, const std::function<void(int)>& f) { pool().run(parts, f); }

}  // namespace fastmlp::cpu
