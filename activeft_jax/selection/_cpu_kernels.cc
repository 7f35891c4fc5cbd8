// CPU kernels for two of ActiveFT's per-step passes (XLA FFI custom calls).
//
// Built on first use by activeft_jax/selection/_cpu.py with the host's C++ compiler
// against the XLA FFI headers that the installed jaxlib ships; without a compiler the
// library runs the same passes as XLA programs (tests/test_cpu_kernels.py compares
// them). Built with -ffp-contract=off: every product and sum is rounded on its own.
//
//   afj_scatter_rows  g_k = sum over i with c_i = k of w_i f_i, rows added in index
//                     order: [M, d], [M], [M] -> [B, d]
//   afj_open_rows     any over k of (float(gap_ik) - t_k <= l_i): [M, B] f16, [B], [M]
//                     -> [M] pred (a row stops at its first open pair)
//
// Work is split over the calling thread and XLA's intra-op pool: rows for the check,
// ranges of prototypes for the scatter (each part adds only its prototypes' rows, so
// every row is read once and every sum keeps the serial order).

#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include <immintrin.h>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// Runs fn(part) for part in [0, parts) on the calling thread and on up to
// parts - 1 tasks of the pool; returns when every part is done. Parts are taken
// from a shared counter, so a task that starts late (or never, when the pool is
// busy) only means the caller does more of them.
template <typename F>
void parallel_parts(ffi::ThreadPool& pool, int64_t parts, F fn) {
  if (parts <= 1) {
    if (parts == 1) fn(0);
    return;
  }
  struct Shared {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
  };
  auto shared = std::make_shared<Shared>();
  auto worker = [shared, parts, &fn]() {
    for (;;) {
      int64_t p = shared->next.fetch_add(1);
      if (p >= parts) return;
      fn(p);
      shared->done.fetch_add(1, std::memory_order_release);
    }
  };
  int64_t helpers = pool.num_threads();
  if (helpers > parts - 1) helpers = parts - 1;
  for (int64_t t = 0; t < helpers; ++t) {
    // A task copies `shared` and may outlive this call: once the counter has run
    // out it returns without touching `fn`.
    pool.Schedule([shared, parts, worker]() {
      if (shared->next.load() >= parts) return;
      worker();
    });
  }
  worker();
  while (shared->done.load(std::memory_order_acquire) < parts) {
    _mm_pause();
  }
}

constexpr int64_t kRowsPerPart = 1024;

constexpr int64_t kScatterParts = 8;

ffi::Error ScatterRowsImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                           ffi::Buffer<ffi::F32> w, ffi::Buffer<ffi::S32> c,
                           ffi::ResultBuffer<ffi::F32> out) {
  auto xd = x.dimensions(), od = out->dimensions();
  if (xd.size() != 2 || od.size() != 2 || xd[1] != od[1] || w.element_count() != xd[0] ||
      c.element_count() != xd[0])
    return ffi::Error::InvalidArgument("afj_scatter_rows: shapes [M, d], [M], [M] -> [B, d]");
  const int64_t m = xd[0], d = xd[1], b = od[0];
  const float* xs = x.typed_data();
  const float* ws = w.typed_data();
  const int32_t* cs = c.typed_data();
  float* o = out->typed_data();
  std::memset(o, 0, sizeof(float) * b * d);
  if (b == 0 || d == 0) return ffi::Error::Success();
  // Parts are contiguous ranges of prototypes holding about equal numbers of rows:
  // each part scans the assignments and adds its own rows, in row order, so every
  // row is read once and every sum keeps the order of a serial scatter.
  std::vector<int64_t> count(b, 0);
  for (int64_t i = 0; i < m; ++i)
    if (cs[i] >= 0 && cs[i] < b) ++count[cs[i]];
  int64_t parts = kScatterParts < b ? kScatterParts : b;
  std::vector<int64_t> cut(parts + 1, b);
  cut[0] = 0;
  int64_t seen = 0, part = 1;
  for (int64_t k = 0; k < b && part < parts; ++k) {
    seen += count[k];
    while (part < parts && seen * parts >= part * m) cut[part++] = k + 1;
  }
  // The rows of each part, in row order (a stable counting sort by part).
  std::vector<int32_t> part_of(b);
  for (int64_t q = 0; q < parts; ++q)
    for (int64_t k = cut[q]; k < cut[q + 1]; ++k) part_of[k] = static_cast<int32_t>(q);
  std::vector<int64_t> start(parts + 1, 0);
  for (int64_t k = 0; k < b; ++k) start[part_of[k] + 1] += count[k];
  for (int64_t q = 0; q < parts; ++q) start[q + 1] += start[q];
  std::vector<int32_t> rows(start[parts]);
  {
    std::vector<int64_t> fill(start.begin(), start.end() - 1);
    for (int64_t i = 0; i < m; ++i)
      if (cs[i] >= 0 && cs[i] < b) rows[fill[part_of[cs[i]]]++] = static_cast<int32_t>(i);
  }
  parallel_parts(pool, parts, [&](int64_t part) {
    for (int64_t r = start[part]; r < start[part + 1]; ++r) {
      const int64_t i = rows[r];
      if (r + 2 < start[part + 1]) {
        const char* next = reinterpret_cast<const char*>(xs + rows[r + 2] * d);
        for (int64_t q = 0; q < d * 4; q += 64) _mm_prefetch(next + q, _MM_HINT_T0);
      }
      const float wi = ws[i];
      const float* __restrict xi = xs + i * d;
      float* __restrict ok = o + cs[i] * d;
      for (int64_t j = 0; j < d; ++j) ok[j] = ok[j] + wi * xi[j];
    }
  });
  return ffi::Error::Success();
}

ffi::Error OpenRowsImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F16> gap,
                        ffi::Buffer<ffi::F32> travel, ffi::Buffer<ffi::F32> limit,
                        ffi::ResultBuffer<ffi::PRED> out) {
  auto gd = gap.dimensions();
  if (gd.size() != 2 || travel.element_count() != gd[1] || limit.element_count() != gd[0])
    return ffi::Error::InvalidArgument("afj_open_rows: shapes [M, B] f16, [B], [M]");
  const int64_t m = gd[0], b = gd[1];
  const uint16_t* g = reinterpret_cast<const uint16_t*>(gap.typed_data());
  const float* t = travel.typed_data();
  const float* l = limit.typed_data();
  bool* o = out->typed_data();
  int64_t parts = (m + kRowsPerPart - 1) / kRowsPerPart;
  parallel_parts(pool, parts, [&](int64_t part) {
    int64_t lo = part * kRowsPerPart, hi = lo + kRowsPerPart < m ? lo + kRowsPerPart : m;
    for (int64_t i = lo; i < hi; ++i) {
      const uint16_t* gi = g + i * b;
      const __m256 li = _mm256_set1_ps(l[i]);
      bool open = false;
      int64_t k = 0;
      for (; k + 8 <= b && !open; k += 8) {
        __m256 gv = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(gi + k)));
        __m256 diff = _mm256_sub_ps(gv, _mm256_loadu_ps(t + k));
        open = _mm256_movemask_ps(_mm256_cmp_ps(diff, li, _CMP_LE_OQ)) != 0;
      }
      for (; k < b && !open; ++k) {
        float gv = _cvtsh_ss(gi[k]);
        open = gv - t[k] <= l[i];
      }
      o[i] = open;
    }
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(AfjScatterRows, ScatterRowsImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(AfjOpenRows, OpenRowsImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F16>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::PRED>>());
