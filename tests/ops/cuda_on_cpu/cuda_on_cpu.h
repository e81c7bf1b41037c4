// cuda_on_cpu: enough of the CUDA execution model to run kernels/*.cu on the CPU, for tests on
// machines without a GPU (tests/ops/test_kernels_on_cpu.py). Compiled with g++ -DUPLAB_CUDA_ON_CPU
// before the kernel sources, which then take their host branches (uplab_scalar.cuh).
//
// What it models, and why that is enough for these kernels (their only warp-level operations are
// __syncwarp, __shfl_xor_sync, __any_sync and mma.sync, at the end of this file; no atomics, no
// static shared memory):
//  - A launch runs its blocks one after another. __syncthreads() is a barrier over the block's
//    threads still in the kernel (a thread that returns leaves it, as on sm_70+). The threads of
//    a block are either
//      fibers (the default): one OS thread switches between them (ucontext) at each barrier, in
//      ascending order before even-numbered barriers and descending before odd ones, so that a
//      read of shared memory another thread writes in the same phase sees NaN one way or the
//      other; cheap enough for many cases, and AddressSanitizer follows the switches;
//    or, under ThreadSanitizer (-fsanitize=thread), real OS threads, free to interleave between
//      barriers as on a GPU: a shared-memory access pair with no barrier between is a data race.
//  - Dynamic shared memory is a fresh heap allocation of exactly the launch's bytes per block,
//    filled with 0xff bytes (NaN in every float type) so that a read of an element nobody wrote
//    shows up in the output, and so that AddressSanitizer sees any access past its end.
//  - cp.async (async_copy/async_commit/async_wait_all_but): checks the alignment the hardware
//    requires (src and dst a multiple of the copy size) and lands each copy either when it is
//    issued or, deferred, when its thread waits for its group (CUDA_ON_CPU_ASYNC_LANDS=issue or
//    wait, default wait). A copy read before its wait then reads stale data; one that lands at
//    issue into a buffer others still read is a data race for ThreadSanitizer. A copy never
//    waited for aborts the run.
//  - Bank conflicts (fiber build only): with CUDA_ON_CPU_BANKS=PATH, every thread logs the
//    shared-memory loads that the kernels route through shared_load() (uplab_scalar.cuh). After
//    each block, the n-th logged load of every lane of a warp is taken as one warp instruction (the
//    traced loads sit in loops where a warp does not diverge; lanes logging different numbers of
//    loads abort the run) and costs as many wavefronts as the hardware needs for it: 32 banks of 4
//    bytes, each delivering one distinct word per wavefront, lanes reading the same word served
//    together. The launch appends "LOADS WAVEFRONTS WORST" (warp loads, their wavefronts, the most
//    of one load) to PATH.
//  - Global sectors (fiber build only): with CUDA_ON_CPU_SECTORS=PATH, every thread logs the
//    source of each cp.async copy it issues, by commit group. After each block, the k-th copy of a
//    commit group of every lane of a warp that has one is taken as one warp instruction (a copy
//    loop whose trip count differs between lanes issues its k-th iteration together) and costs the
//    distinct 32-byte sectors it reads (a zero-filled copy reads none): the L2's share with no L1
//    hits. The launch appends "COPIES SECTORS BLOCK_SECTORS LANE_COPIES" to PATH: the warp copy
//    instructions, the sum of their sectors, the sum over blocks of the distinct sectors a block
//    reads (the L2's share if the L1 caught every repeat within a block), and the lanes' copies
//    that read a sector (zero-filled ones left out). Buffers are 256-byte aligned, as from
//    cudaMalloc, so the sectors are the GPU's.
//  - half: _Float16 (round to nearest even, like cvt.rn.f16.f32); bfloat16 is plain bit
//    arithmetic in uplab_scalar.cuh already.
#pragma once

#include <algorithm>
#include <array>
#include <condition_variable>
#include <memory>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <mutex>
#include <new>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__SANITIZE_THREAD__)
#define CUDA_ON_CPU_OS_THREADS 1
#else
#define CUDA_ON_CPU_OS_THREADS 0
#include <ucontext.h>
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#endif
#endif

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) alignas(n)

struct dim3 {
    unsigned int x = 1, y = 1, z = 1;
};
struct alignas(8) float2 {
    float x, y;
};
struct alignas(16) double2 {
    double x, y;
};
struct alignas(8) uint2 {
    unsigned int x, y;
};
struct alignas(16) uint4 {
    unsigned int x, y, z, w;
};
inline float2 make_float2(float x, float y) { return {x, y}; }
inline double2 make_double2(double x, double y) { return {x, y}; }
inline uint2 make_uint2(unsigned int x, unsigned int y) { return {x, y}; }
inline uint4 make_uint4(unsigned int x, unsigned int y, unsigned int z, unsigned int w) {
    return {x, y, z, w};
}
inline float __uint_as_float(unsigned int u) {
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
}
inline unsigned int __float_as_uint(float f) {
    unsigned int u;
    std::memcpy(&u, &f, sizeof u);
    return u;
}
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }

namespace cuda_on_cpu {

[[noreturn]] inline void fail(const char* what) {
    std::fprintf(stderr, "cuda_on_cpu: %s\n", what);
    std::fflush(stderr);
    std::abort();
}

inline float half_to_float(unsigned short bits) {
    _Float16 h;
    std::memcpy(&h, &bits, sizeof h);
    return static_cast<float>(h);
}

inline unsigned short float_to_half(float v) {
    const _Float16 h = static_cast<_Float16>(v);
    unsigned short bits;
    std::memcpy(&bits, &h, sizeof bits);
    return bits;
}

// The launch's geometry, the current block and its shared memory: written by the launching thread
// before it hands a block to the block's threads (fibers, or OS threads through their go signals).
inline dim3 grid_dim, block_dim, block_idx;
inline unsigned char* shared_memory = nullptr;

inline unsigned char* dynamic_shared_memory() { return shared_memory; }

// cp.async: one thread's copies, grouped by commit.
struct AsyncCopy {
    void* dst;
    const void* src;
    int bytes;
    bool valid;
};

// What a CUDA thread owns: its index and its cp.async copies in flight. `current` points at the
// running thread's (a thread_local of the OS thread; the fiber scheduler sets it at each switch).
struct ThreadState {
    dim3 idx;
    int linear = 0;  // threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)
    std::vector<AsyncCopy> open_group;
    std::deque<std::vector<AsyncCopy>> committed_groups;
    std::vector<std::uint32_t> shared_loads;  // byte offsets, under CUDA_ON_CPU_BANKS
    // cp.async source sectors per commit group, the open group last (kNoSector: zero-filled),
    // under CUDA_ON_CPU_SECTORS
    std::vector<std::vector<std::uintptr_t>> copy_sectors;
};

constexpr std::uintptr_t kNoSector = ~std::uintptr_t(0);

inline thread_local ThreadState* current = nullptr;

inline const char* banks_report() {
    static const char* const path = std::getenv("CUDA_ON_CPU_BANKS");
    return path;
}

inline void note_shared_load(const void* p, std::size_t bytes) {
    if (banks_report() == nullptr) return;
    const std::ptrdiff_t offset = static_cast<const unsigned char*>(p) - shared_memory;
    if (offset < 0 || offset % 4 + static_cast<std::ptrdiff_t>(bytes) > 4) {
        fail("a traced shared load is outside shared memory or straddles a 4-byte word");
    }
    current->shared_loads.push_back(static_cast<std::uint32_t>(offset));
}

struct BankTally {
    unsigned long loads = 0, wavefronts = 0, worst = 0;
};
inline BankTally bank_tally;

// Wavefronts of the warp loads logged by `lanes` (one warp's threads), then clears their logs.
inline void tally_banks(ThreadState* const* lanes, std::size_t n_lanes) {
    const std::size_t n = lanes[0]->shared_loads.size();
    for (std::size_t i = 0; i < n_lanes; ++i) {
        if (lanes[i]->shared_loads.size() != n) {
            fail("lanes of a warp logged different numbers of shared loads (a divergent trace)");
        }
    }
    for (std::size_t k = 0; k < n; ++k) {
        std::uint32_t words[32][32];
        unsigned long distinct[32] = {};
        for (std::size_t i = 0; i < n_lanes; ++i) {
            const std::uint32_t word = lanes[i]->shared_loads[k] / 4, bank = word % 32;
            if (std::find(words[bank], words[bank] + distinct[bank], word) ==
                words[bank] + distinct[bank]) {
                words[bank][distinct[bank]++] = word;
            }
        }
        const unsigned long wavefronts = *std::max_element(distinct, distinct + 32);
        ++bank_tally.loads;
        bank_tally.wavefronts += wavefronts;
        bank_tally.worst = std::max(bank_tally.worst, wavefronts);
    }
    for (std::size_t i = 0; i < n_lanes; ++i) lanes[i]->shared_loads.clear();
}

inline void write_bank_report() {
    std::FILE* file = std::fopen(banks_report(), "a");
    if (file == nullptr) fail("cannot open CUDA_ON_CPU_BANKS for appending");
    std::fprintf(file, "%lu %lu %lu\n", bank_tally.loads, bank_tally.wavefronts, bank_tally.worst);
    if (std::fclose(file) != 0) fail("cannot write CUDA_ON_CPU_BANKS");
}

inline const char* sectors_report() {
    static const char* const path = std::getenv("CUDA_ON_CPU_SECTORS");
    return path;
}

inline void note_copy_source(const void* src, int bytes, bool valid) {
    if (sectors_report() == nullptr) return;
    const auto address = reinterpret_cast<std::uintptr_t>(src);
    if (valid && address % 32 + static_cast<std::uintptr_t>(bytes) > 32) {
        fail("a traced cp.async source straddles a 32-byte sector");
    }
    if (current->copy_sectors.empty()) current->copy_sectors.emplace_back();
    current->copy_sectors.back().push_back(valid ? address / 32 : kNoSector);
}

struct SectorTally {
    unsigned long copies = 0, sectors = 0, block_sectors = 0, lane_copies = 0;
};
inline SectorTally sector_tally;

// Adds the warp copy instructions of `lanes` (one warp's threads) and their sectors to the tally
// and the sectors to `block` (the block's, repeats included), then clears the lanes' logs.
inline void tally_sectors(ThreadState* const* lanes, std::size_t n_lanes,
                          std::vector<std::uintptr_t>& block) {
    std::size_t n_groups = 0;
    for (std::size_t i = 0; i < n_lanes; ++i) {
        n_groups = std::max(n_groups, lanes[i]->copy_sectors.size());
    }
    for (std::size_t g = 0; g < n_groups; ++g) {
        for (std::size_t k = 0;; ++k) {
            std::uintptr_t sectors[32];
            std::size_t n_sectors = 0;
            bool issued = false;
            for (std::size_t i = 0; i < n_lanes; ++i) {
                const auto& groups = lanes[i]->copy_sectors;
                if (g >= groups.size() || k >= groups[g].size()) continue;
                issued = true;
                const std::uintptr_t sector = groups[g][k];
                if (sector == kNoSector) continue;
                block.push_back(sector);
                ++sector_tally.lane_copies;
                if (std::find(sectors, sectors + n_sectors, sector) == sectors + n_sectors) {
                    sectors[n_sectors++] = sector;
                }
            }
            if (!issued) break;
            ++sector_tally.copies;
            sector_tally.sectors += n_sectors;
        }
    }
    for (std::size_t i = 0; i < n_lanes; ++i) lanes[i]->copy_sectors.clear();
}

inline void write_sector_report() {
    std::FILE* file = std::fopen(sectors_report(), "a");
    if (file == nullptr) fail("cannot open CUDA_ON_CPU_SECTORS for appending");
    std::fprintf(file, "%lu %lu %lu %lu\n", sector_tally.copies, sector_tally.sectors,
                 sector_tally.block_sectors, sector_tally.lane_copies);
    if (std::fclose(file) != 0) fail("cannot write CUDA_ON_CPU_SECTORS");
}

inline void land(const AsyncCopy& copy) {
    if (copy.valid) {
        std::memcpy(copy.dst, copy.src, copy.bytes);
    } else {
        std::memset(copy.dst, 0, copy.bytes);
    }
}

inline bool lands_at_issue() {
    static const bool at_issue = [] {
        const char* mode = std::getenv("CUDA_ON_CPU_ASYNC_LANDS");
        if (mode == nullptr || std::strcmp(mode, "wait") == 0) return false;
        if (std::strcmp(mode, "issue") == 0) return true;
        fail("CUDA_ON_CPU_ASYNC_LANDS must be 'issue' or 'wait'");
    }();
    return at_issue;
}

inline void async_copy(void* dst, const void* src, int bytes, bool valid) {
    if (reinterpret_cast<std::uintptr_t>(dst) % bytes != 0) {
        fail("cp.async destination not aligned to the copy size");
    }
    if (valid && reinterpret_cast<std::uintptr_t>(src) % bytes != 0) {
        fail("cp.async source not aligned to the copy size");
    }
    note_copy_source(src, bytes, valid);
    const AsyncCopy copy{dst, src, bytes, valid};
    if (lands_at_issue()) {
        land(copy);
    } else {
        current->open_group.push_back(copy);
    }
}

inline void async_commit() {
    current->committed_groups.push_back(std::move(current->open_group));
    current->open_group.clear();
    if (sectors_report() != nullptr) current->copy_sectors.emplace_back();
}

// cp.async.wait_group n: every committed group but the newest n has landed.
inline void async_wait_all_but(std::size_t newest) {
    auto& groups = current->committed_groups;
    while (groups.size() > newest) {
        for (const AsyncCopy& copy : groups.front()) land(copy);
        groups.pop_front();
    }
}

inline void check_no_copy_left(ThreadState& state) {
    bool left = !state.open_group.empty();
    for (const auto& group : state.committed_groups) left = left || !group.empty();
    if (left) fail("a thread returned with cp.async copies it never waited for");
    state.committed_groups.clear();
}

inline dim3 thread_index(int t, dim3 block) {
    return {t % block.x, t / block.x % block.y, t / (block.x * block.y)};
}

#if CUDA_ON_CPU_OS_THREADS
// A barrier over the (OS) threads of a block, or of a warp, still inside the kernel: the block's
// serves __syncthreads, each warp's __syncwarp.
class Barrier {
  public:
    void reset(int threads) {
        std::lock_guard<std::mutex> lock(mutex_);
        in_kernel_ = threads;
        arrived_ = 0;
    }

    void arrive_and_wait() {
        std::unique_lock<std::mutex> lock(mutex_);
        const unsigned long generation = generation_;
        if (++arrived_ == in_kernel_) {
            release();
        } else {
            condition_.wait(lock, [&] { return generation_ != generation; });
        }
    }

    // The calling thread has returned from the kernel: the others no longer wait for it.
    void leave() {
        std::lock_guard<std::mutex> lock(mutex_);
        --in_kernel_;
        if (arrived_ > 0 && arrived_ == in_kernel_) release();
    }

  private:
    void release() {
        arrived_ = 0;
        ++generation_;
        condition_.notify_all();
    }

    std::mutex mutex_;
    std::condition_variable condition_;
    int in_kernel_ = 0, arrived_ = 0;
    unsigned long generation_ = 0;
};

inline Barrier block_barrier;
inline std::vector<std::unique_ptr<Barrier>> warp_barriers;  // one per warp of the block

// A counter one thread posts and another waits for, or stops.
class Signal {
  public:
    void post(unsigned long value) {
        std::lock_guard<std::mutex> lock(mutex_);
        value_ = value;
        condition_.notify_one();
    }

    void stop() {
        std::lock_guard<std::mutex> lock(mutex_);
        stopped_ = true;
        condition_.notify_one();
    }

    // Waits until `value` is posted (true) or the signal is stopped (false).
    bool wait_for(unsigned long value) {
        std::unique_lock<std::mutex> lock(mutex_);
        condition_.wait(lock, [&] { return stopped_ || value_ >= value; });
        return value_ >= value;
    }

  private:
    std::mutex mutex_;
    std::condition_variable condition_;
    unsigned long value_ = 0;
    bool stopped_ = false;
};
#else
// Fibers: the block's threads on the launching OS thread, each with its own stack. A fiber runs
// until it reaches a barrier (it switches back to the scheduler) or returns.
enum class Waits { nothing, block_barrier, warp_barrier, done };

struct Fiber {
    ucontext_t context;
    std::unique_ptr<char[]> stack;
    ThreadState state;
    Waits waits = Waits::nothing;
    void* fake_stack = nullptr;  // AddressSanitizer's bookkeeping across switches
};

constexpr std::size_t kFiberStack = 256 * 1024;
inline ucontext_t scheduler;
inline Fiber* running = nullptr;
inline const void* scheduler_stack_bottom = nullptr;
inline std::size_t scheduler_stack_size = 0;
inline const std::function<void()>* fiber_body = nullptr;

// AddressSanitizer must be told of each stack switch (sanitizer/common_interface_defs.h).
inline void before_switch(void** fake_stack, const void* bottom, std::size_t size) {
#if defined(__SANITIZE_ADDRESS__)
    __sanitizer_start_switch_fiber(fake_stack, bottom, size);
#else
    (void)fake_stack, (void)bottom, (void)size;
#endif
}

inline void after_switch(void* fake_stack, const void** bottom, std::size_t* size) {
#if defined(__SANITIZE_ADDRESS__)
    __sanitizer_finish_switch_fiber(fake_stack, bottom, size);
#else
    (void)fake_stack, (void)bottom, (void)size;
#endif
}

// The running fiber stops until the scheduler releases what it waits for.
inline void yield_to_scheduler(Waits waits) {
    Fiber* self = running;
    self->waits = waits;
    // A finished fiber's stack is dead: nullptr tells AddressSanitizer to drop its fake stack.
    before_switch(waits == Waits::done ? nullptr : &self->fake_stack, scheduler_stack_bottom,
                  scheduler_stack_size);
    swapcontext(&self->context, &scheduler);
    after_switch(self->fake_stack, &scheduler_stack_bottom, &scheduler_stack_size);
}

inline void fiber_entry() {
    after_switch(nullptr, &scheduler_stack_bottom, &scheduler_stack_size);
    (*fiber_body)();
    yield_to_scheduler(Waits::done);  // never resumed
}

// After a pass every live fiber waits at a barrier. Releases the warps whose live lanes all wait
// at a warp barrier, else (none) the block if every live thread waits at __syncthreads. False
// when nothing can be released: threads wait at different barriers (a divergent barrier).
inline bool release(std::vector<Fiber>& fibers) {
    bool released = false;
    for (std::size_t warp = 0; warp * 32 < fibers.size(); ++warp) {
        const std::size_t end = std::min(fibers.size(), warp * 32 + 32);
        bool all = true, any = false;
        for (std::size_t i = warp * 32; i < end; ++i) {
            if (fibers[i].waits == Waits::done) continue;
            any = true;
            all = all && fibers[i].waits == Waits::warp_barrier;
        }
        if (!any || !all) continue;
        for (std::size_t i = warp * 32; i < end; ++i) {
            if (fibers[i].waits == Waits::warp_barrier) fibers[i].waits = Waits::nothing;
        }
        released = true;
    }
    if (released) return true;
    bool all = true;
    for (const Fiber& fiber : fibers) {
        all = all && (fiber.waits == Waits::done || fiber.waits == Waits::block_barrier);
    }
    if (!all) return false;
    for (Fiber& fiber : fibers) {
        if (fiber.waits == Waits::block_barrier) fiber.waits = Waits::nothing;
    }
    return true;
}

inline void run_block_on_fibers(std::vector<Fiber>& fibers, const std::function<void()>& body) {
    fiber_body = &body;
    for (Fiber& fiber : fibers) {
        fiber.waits = Waits::nothing;
        getcontext(&fiber.context);
        fiber.context.uc_stack.ss_sp = fiber.stack.get();
        fiber.context.uc_stack.ss_size = kFiberStack;
        fiber.context.uc_link = nullptr;
        makecontext(&fiber.context, fiber_entry, 0);
    }
    const int n = static_cast<int>(fibers.size());
    for (int phase = 0;; ++phase) {
        bool alive = false;
        for (int i = 0; i < n; ++i) {
            Fiber& fiber = fibers[phase % 2 == 0 ? i : n - 1 - i];
            if (fiber.waits != Waits::nothing) continue;
            running = &fiber;
            current = &fiber.state;
            void* fake_stack = nullptr;
            before_switch(&fake_stack, fiber.stack.get(), kFiberStack);
            swapcontext(&scheduler, &fiber.context);
            after_switch(fake_stack, nullptr, nullptr);
        }
        for (const Fiber& fiber : fibers) alive = alive || fiber.waits != Waits::done;
        if (!alive) break;
        if (!release(fibers)) fail("threads wait at different barriers (__syncthreads/__syncwarp)");
    }
    for (Fiber& fiber : fibers) check_no_copy_left(fiber.state);
    if (banks_report() != nullptr || sectors_report() != nullptr) {
        std::vector<std::uintptr_t> block_sectors;
        for (std::size_t warp = 0; warp * 32 < fibers.size(); ++warp) {
            ThreadState* lanes[32];
            const std::size_t n_lanes = std::min<std::size_t>(32, fibers.size() - warp * 32);
            for (std::size_t i = 0; i < n_lanes; ++i) lanes[i] = &fibers[warp * 32 + i].state;
            if (banks_report() != nullptr) tally_banks(lanes, n_lanes);
            if (sectors_report() != nullptr) tally_sectors(lanes, n_lanes, block_sectors);
        }
        std::sort(block_sectors.begin(), block_sectors.end());
        sector_tally.block_sectors +=
            std::unique(block_sectors.begin(), block_sectors.end()) - block_sectors.begin();
    }
    running = nullptr;
    current = nullptr;
}
#endif

// The kernel's arguments from the launch's buffers and ints: pointer parameters take the buffers
// in order, int parameters the ints in order.
struct Launch {
    dim3 grid, block;
    std::size_t shared_bytes = 0;
    std::vector<void*> buffers;
    std::vector<int> ints;
};

template <typename... P, std::size_t... I>
std::tuple<P...> kernel_arguments(const Launch& config, std::index_sequence<I...>) {
    constexpr std::size_t n_pointers = (std::size_t(0) + ... + std::is_pointer_v<P>);
    constexpr bool pointers_first = [] {
        const bool is_pointer[] = {std::is_pointer_v<P>...};
        for (std::size_t i = 0; i < n_pointers; ++i) {
            if (!is_pointer[i]) return false;
        }
        return true;
    }();
    static_assert(pointers_first, "kernel parameters: pointers first, then ints");
    if (config.buffers.size() != n_pointers || config.ints.size() != sizeof...(P) - n_pointers) {
        fail("the launch's buffers and ints do not match the kernel's parameters");
    }
    auto argument = [&](auto index, auto type) {
        using T = typename decltype(type)::type;
        constexpr std::size_t i = decltype(index)::value;
        if constexpr (std::is_pointer_v<T>) {
            return static_cast<T>(config.buffers[i]);
        } else {
            return static_cast<T>(config.ints[i - n_pointers]);
        }
    };
    return std::tuple<P...>(
        argument(std::integral_constant<std::size_t, I>{}, std::type_identity<P>{})...);
}

// Runs kernel<<<grid, block, shared_bytes>>>(args...) to completion.
template <typename... P>
void launch(void (*kernel)(P...), const Launch& config) {
    const std::tuple<P...> args =
        kernel_arguments<P...>(config, std::index_sequence_for<P...>{});
    const std::function<void()> body = [&] { std::apply(kernel, args); };
    const int n_threads = static_cast<int>(config.block.x * config.block.y * config.block.z);
    if (n_threads <= 0 || n_threads > 1024) fail("a block has 1 to 1024 threads");
    grid_dim = config.grid;
    block_dim = config.block;
    const std::size_t shared_bytes = config.shared_bytes > 0 ? config.shared_bytes : 1;
    auto for_each_block = [&](auto&& run_block) {
        for (unsigned int z = 0; z < config.grid.z; ++z) {
            for (unsigned int y = 0; y < config.grid.y; ++y) {
                for (unsigned int x = 0; x < config.grid.x; ++x) {
                    auto* shared = static_cast<unsigned char*>(
                        ::operator new[](shared_bytes, std::align_val_t(16)));
                    std::memset(shared, 0xff, shared_bytes);
                    run_block(dim3{x, y, z}, shared);
                    ::operator delete[](shared, std::align_val_t(16));
                }
            }
        }
    };
#if CUDA_ON_CPU_OS_THREADS
    // Block threads are OS threads parked between blocks. Each has its own go and done signals
    // with the launching thread, so that no thread's work happens-before another's except through
    // the block's barriers: ThreadSanitizer then reports any shared-memory access pair that no
    // barrier orders.
    struct Worker {
        Signal go, done;
        std::thread thread;
    };
    if (banks_report() != nullptr) fail("CUDA_ON_CPU_BANKS needs the fiber build");
    if (sectors_report() != nullptr) fail("CUDA_ON_CPU_SECTORS needs the fiber build");
    std::vector<Worker> workers(n_threads);
    warp_barriers.clear();
    for (int warp = 0; warp * 32 < n_threads; ++warp) {
        warp_barriers.push_back(std::make_unique<Barrier>());
    }
    for (int t = 0; t < n_threads; ++t) {
        workers[t].thread = std::thread([&, t] {
            ThreadState state;
            state.idx = thread_index(t, config.block);
            state.linear = t;
            current = &state;
            for (unsigned long block = 1;; ++block) {
                if (!workers[t].go.wait_for(block)) return;
                body();
                block_barrier.leave();
                warp_barriers[t / 32]->leave();
                check_no_copy_left(state);
                workers[t].done.post(block);
            }
        });
    }
    unsigned long block_number = 0;
    for_each_block([&](dim3 index, unsigned char* shared) {
        block_barrier.reset(n_threads);
        for (int warp = 0; warp * 32 < n_threads; ++warp) {
            warp_barriers[warp]->reset(std::min(32, n_threads - 32 * warp));
        }
        block_idx = index;
        shared_memory = shared;
        ++block_number;
        for (Worker& worker : workers) worker.go.post(block_number);
        for (Worker& worker : workers) worker.done.wait_for(block_number);
        shared_memory = nullptr;
    });
    for (Worker& worker : workers) worker.go.stop();
    for (Worker& worker : workers) worker.thread.join();
#else
    std::vector<Fiber> fibers(n_threads);
    for (int t = 0; t < n_threads; ++t) {
        fibers[t].stack.reset(new char[kFiberStack]);
        fibers[t].state.idx = thread_index(t, config.block);
        fibers[t].state.linear = t;
    }
    for_each_block([&](dim3 index, unsigned char* shared) {
        block_idx = index;
        shared_memory = shared;
        run_block_on_fibers(fibers, body);
        shared_memory = nullptr;
    });
    if (banks_report() != nullptr) write_bank_report();
    if (sectors_report() != nullptr) write_sector_report();
#endif
}

}  // namespace cuda_on_cpu

#define gridDim (::cuda_on_cpu::grid_dim)
#define blockDim (::cuda_on_cpu::block_dim)
#define blockIdx (::cuda_on_cpu::block_idx)
#define threadIdx (::cuda_on_cpu::current->idx)

inline void __syncthreads() {
#if CUDA_ON_CPU_OS_THREADS
    ::cuda_on_cpu::block_barrier.arrive_and_wait();
#else
    ::cuda_on_cpu::yield_to_scheduler(::cuda_on_cpu::Waits::block_barrier);
#endif
}

// Full-warp __syncwarp (the only mask these kernels use): a barrier over the warp's live lanes.
inline void __syncwarp(unsigned int mask = 0xffffffffu) {
    if (mask != 0xffffffffu) ::cuda_on_cpu::fail("__syncwarp: only the full mask is emulated");
#if CUDA_ON_CPU_OS_THREADS
    ::cuda_on_cpu::warp_barriers[::cuda_on_cpu::current->linear / 32]->arrive_and_wait();
#else
    ::cuda_on_cpu::yield_to_scheduler(::cuda_on_cpu::Waits::warp_barrier);
#endif
}

namespace cuda_on_cpu {
inline std::vector<std::array<unsigned int, 32>> warp_shuffles(32);  // enough for 1024 threads
}

// Full-warp __shfl_xor_sync: each lane posts its value, the warp meets, each lane reads its
// partner's (lane ^ lane_mask), and the warp meets again before the slots are reused.
inline unsigned int __shfl_xor_sync(unsigned int mask, unsigned int value, int lane_mask) {
    if (mask != 0xffffffffu) ::cuda_on_cpu::fail("__shfl_xor_sync: only the full mask is emulated");
    const int lane = ::cuda_on_cpu::current->linear % 32;
    auto& slots = ::cuda_on_cpu::warp_shuffles[::cuda_on_cpu::current->linear / 32];
    slots[lane] = value;
    __syncwarp();
    const unsigned int theirs = slots[lane ^ lane_mask];
    __syncwarp();
    return theirs;
}

// Full-warp __any_sync, through the same slots: whether any lane's predicate is non-zero.
inline int __any_sync(unsigned int mask, int predicate) {
    if (mask != 0xffffffffu) ::cuda_on_cpu::fail("__any_sync: only the full mask is emulated");
    const int lane = ::cuda_on_cpu::current->linear % 32;
    auto& slots = ::cuda_on_cpu::warp_shuffles[::cuda_on_cpu::current->linear / 32];
    slots[lane] = predicate != 0;
    __syncwarp();
    unsigned int any = 0;
    for (int i = 0; i < 32; ++i) any |= slots[i];
    __syncwarp();
    return any != 0;
}

namespace cuda_on_cpu {

// mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.{bf16,f16}.f32, D = A B + C, as one warp: each
// lane posts its fragments (PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating point
// type"), the warp meets, each lane computes its own four D elements (products exact in float,
// summed in float in k order; a tensor core's order and rounding of the sum may differ in the
// last bits), and the warp meets again before the fragments' slots are reused.
struct WarpFragments {
    unsigned int a[32][4], b[32][2];
};

inline std::vector<WarpFragments> warp_fragments(32);  // enough for 1024 threads

template <bool kBf16>
float mma_element(unsigned int packed, int half) {
    const unsigned short bits = static_cast<unsigned short>(packed >> (16 * half));
    if constexpr (kBf16) {
        return __uint_as_float(static_cast<unsigned int>(bits) << 16);
    } else {
        return half_to_float(bits);
    }
}

template <bool kBf16>
void mma_m16n8k16(float (&d)[4], const unsigned int (&a)[4], const unsigned int (&b)[2],
                  const float (&c)[4]) {
    const int lane = current->linear % 32, group = lane / 4, in_group = lane % 4;
    WarpFragments& warp = warp_fragments[current->linear / 32];
    for (int i = 0; i < 4; ++i) warp.a[lane][i] = a[i];
    for (int i = 0; i < 2; ++i) warp.b[lane][i] = b[i];
    __syncwarp();
    float out[4];
    for (int i = 0; i < 4; ++i) {
        const int row = group + 8 * (i / 2), col = 2 * in_group + i % 2;
        float sum = 0.0f;
        for (int k = 0; k < 16; ++k) {
            // A(row, k): lane (row % 8) * 4 + (k % 8) / 2, register (row >= 8) + 2 (k >= 8).
            const unsigned int a_reg = warp.a[(row % 8) * 4 + (k % 8) / 2][row / 8 + 2 * (k / 8)];
            // B(k, col): lane col * 4 + (k % 8) / 2, register k >= 8.
            const unsigned int b_reg = warp.b[col * 4 + (k % 8) / 2][k / 8];
            sum += mma_element<kBf16>(a_reg, k % 2) * mma_element<kBf16>(b_reg, k % 2);
        }
        out[i] = c[i] + sum;
    }
    __syncwarp();
    for (int i = 0; i < 4; ++i) d[i] = out[i];
}

}  // namespace cuda_on_cpu
