// CPU kernels for the passes of ActiveFT's step (XLA FFI custom calls).
//
// Built on first use by activeft_jax/selection/_cpu.py with the host's C++ compiler
// against the XLA FFI headers that the installed jaxlib ships; without a compiler the
// library runs the same passes as XLA programs (tests/test_cpu_kernels.py compares
// them). Built with -ffp-contract=off: every product and sum is rounded on its own
// (afj_refresh_pairs's dot products use explicit fused multiply-adds: their values
// only need to lie within the margin of the exact ones).
//
//   afj_own_sims      s_i = f_i . p_{c_i}, its d products summed by the fixed halving
//                     tree of `_tree_reduce` (prototypes.py): [M, d], [B, d], [M] -> [M]
//   afj_grad_rows     the loss's weights w_i = 1 / (1 + exp(-(a_{c_i} - s_i / tau))) and
//                     gradient rows g_k = sum over i with c_i = k of -(w_i / tau) f_i, rows
//                     added in index order: [M, d], [M], [M], [B], [] -> [M], [B, d]
//   afj_own_sims_grad afj_own_sims, then afj_grad_rows of its s, reading each row once
//   afj_fix_grad      afj_grad_rows of a new assignment from afj_own_sims_grad's outputs
//                     for an earlier one, summing again only the rows of g whose
//                     features changed prototype (or similarity)
//   afj_open_rows     any over k of (float(gap_ik) - t_k <= l_i): [M, B] f16, [B], [M],
//                     rowmin [M], psi [] -> [M] pred, rowmin [M] (a row stops at its first
//                     open pair; a row whose rowmin - psi clears l_i is not read at all)
//   afj_refresh_pairs for each failing row, the pairs whose bound is within a horizon
//                     of opening: their similarities (dot products), the row's new
//                     prototype when one of them beats its own similarity by more
//                     than the margin, and their bounds refreshed in place; rows in a
//                     near tie are listed for the caller to decide (see RefreshPairsImpl).
//                     On a CPU with AMX, rows with many such pairs ("wide" rows) get all
//                     their similarities approximated on the matrix unit in bfloat16,
//                     exact dot products only for the pairs near their own similarity,
//                     and every bound refreshed from the approximations (the same
//                     decisions; the bounds stay sound)
//
// Work is split over the calling thread and XLA's intra-op pool: rows for the own
// similarities, the check and the refresh, ranges of prototypes for the gradient rows
// (each part adds only its prototypes' rows, so every row is read once and every sum
// keeps the serial order).

#include <algorithm>
#include <array>
#include <atomic>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include <immintrin.h>

#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512BF16__) && defined(__linux__)
#define AFJ_AMX 1
#include <sys/syscall.h>
#include <unistd.h>
#endif

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

// float(gap_k) - t_k for 8 pairs, and for one: the lower bound on a pair's angle now.
inline __m256 Slack8(const uint16_t* gap, const float* t) {
  return _mm256_sub_ps(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(gap))),
                       _mm256_loadu_ps(t));
}

inline float Slack(uint16_t gap, float t) { return _cvtsh_ss(gap) - t; }

// Which of 8 pairs have float(gap_k) - t_k <= reach (a bit each): the bound comparison
// of the check and of the refresh.
inline int Within8(__m256 slack, __m256 reach) {
  return _mm256_movemask_ps(_mm256_cmp_ps(slack, reach, _CMP_LE_OQ));
}

inline int WithinMask8(const uint16_t* gap, const float* t, __m256 reach) {
  return Within8(Slack8(gap, t), reach);
}

inline bool Within(uint16_t gap, float t, float reach) { return Slack(gap, t) <= reach; }

constexpr int64_t kRowsPerPart = 1024;

constexpr int64_t kScatterParts = 8;

// dst[j] = dst[j] + src[j], j < h, for the two halves of one buffer (they do not
// overlap, so the loop vectorizes).
inline void AddHalves(float* __restrict dst, const float* __restrict src, int64_t h) {
  for (int64_t j = 0; j < h; ++j) dst[j] = dst[j] + src[j];
}

// The halving tree's levels from N values on, N known at compile time: the values
// live in a local array that the compiler keeps in registers, where the loop of
// TreeDotAny stores each level and reads it back (~1.4x faster at d = 384, ~1.8x with
// every level here). The same roundings as those loops: half plus half, an odd last
// element carried.
template <int N>
struct Halving {
  static inline float Sum(float* r) {
    constexpr int h = N / 2;
    for (int j = 0; j < h; ++j) r[j] = r[j] + r[j + h];
    if constexpr (N % 2 == 1) r[h] = r[2 * h];
    return Halving<(N + 1) / 2>::Sum(r);
  }
};
template <>
struct Halving<1> {
  static inline float Sum(float* r) { return r[0]; }
};

template <int N>
float HalvingFrom(const float* v) {
  float r[N];
  for (int j = 0; j < N; ++j) r[j] = v[j];
  return Halving<N>::Sum(r);
}

// HalvingFrom<n> for n = 1 .. kHalvingTail.
constexpr int kHalvingTail = 64;
template <int... I>
constexpr std::array<float (*)(const float*), sizeof...(I)> HalvingTable(
    std::integer_sequence<int, I...>) {
  return {&HalvingFrom<I + 1>...};
}
constexpr auto kHalvingFrom = HalvingTable(std::make_integer_sequence<int, kHalvingTail>{});

// x . p with its d products summed by the halving tree of `_tree_reduce`
// (prototypes.py): the first half plus the second, an odd last element carried.
// (For an even d the first level is taken with the products, so that these are not
// stored and read back: the same roundings, product then sum.) v: d floats of scratch.
float TreeDotAny(const float* __restrict xi, const float* __restrict pk, int64_t d,
                 float* __restrict v) {
  int64_t n = d;
  if (d % 2 == 0) {
    n = d / 2;
    const float *__restrict x1 = xi + n, *__restrict p1 = pk + n;
    for (int64_t j = 0; j < n; ++j) v[j] = xi[j] * pk[j] + x1[j] * p1[j];
  } else {
    for (int64_t j = 0; j < d; ++j) v[j] = xi[j] * pk[j];
  }
  for (; n > kHalvingTail; n = (n + 1) / 2) {
    const int64_t h = n / 2;
    AddHalves(v, v + h, h);
    if (n % 2) v[h] = v[2 * h];
  }
  return kHalvingFrom[n - 1](v);
}

// TreeDotAny for one even d known at compile time, every level in registers.
template <int D>
float TreeDotFixed(const float* __restrict xi, const float* __restrict pk, int64_t,
                   float*) {
  static_assert(D % 2 == 0, "TreeDotFixed: the first level pairs x[j] with x[j + D / 2]");
  constexpr int n = D / 2;
  float r[n];
  for (int j = 0; j < n; ++j) r[j] = xi[j] * pk[j] + xi[j + n] * pk[j + n];
  return Halving<n>::Sum(r);
}

// The tree dot product for d >= 1: the widths of common embeddings compiled for their d.
using TreeDotFn = float (*)(const float*, const float*, int64_t, float*);

TreeDotFn TreeDotFor(int64_t d) {
  switch (d) {
    case 64: return &TreeDotFixed<64>;
    case 128: return &TreeDotFixed<128>;
    case 256: return &TreeDotFixed<256>;
    case 384: return &TreeDotFixed<384>;
    case 512: return &TreeDotFixed<512>;
    case 576: return &TreeDotFixed<576>;
    case 768: return &TreeDotFixed<768>;
    case 1024: return &TreeDotFixed<1024>;
    default: return &TreeDotAny;
  }
}

// The loss's weight of a feature, w = sigmoid(a_c - s / tau) = 1 / (1 + exp(-(a_c - s / tau))),
// each operation rounded on its own (the same bits in every kernel that computes it).
inline float Weight(float a, float s, float tau) {
  const float t = a - s / tau;
  return 1.0f / (1.0f + std::exp(-t));
}

// o_k += coef * x_i, each product and sum rounded on its own.
inline void AddRow(float* __restrict ok, const float* __restrict xi, float coef, int64_t d) {
  for (int64_t j = 0; j < d; ++j) ok[j] = ok[j] + coef * xi[j];
}

// g_k += -(w_i / tau) x_i for the given rows i of prototype k, in their order.
inline void AddRows(float* gk, const float* xs, const int32_t* rows, int64_t count,
                    const float* w, float tau, int64_t d) {
  for (int64_t j = 0; j < count; ++j) AddRow(gk, xs + rows[j] * d, -(w[rows[j]] / tau), d);
}

inline void PrefetchRow(const float* row, int64_t d) {
  const char* p = reinterpret_cast<const char*>(row);
  for (int64_t q = 0; q < d * 4; q += 64) _mm_prefetch(p + q, _MM_HINT_T0);
}

inline int64_t Clamp(int32_t c, int64_t b) { return c < 0 ? 0 : (c >= b ? b - 1 : c); }

// The rows i < m with c_i in [0, b) and keep(c_i), sorted by prototype, each
// prototype's in row order (a stable counting sort), and up to kScatterParts
// contiguous ranges of prototypes that hold about equal numbers of them. A part
// that adds its prototypes' rows in this order reads every row once, keeps the order
// of a serial scatter in every sum, and adds each prototype's rows one after the
// other (its sum and its prototype stay in the L1 cache).
struct ByPrototype {
  int64_t parts = 0;
  std::vector<int64_t> cut;     // part q: prototypes [cut[q], cut[q + 1])
  std::vector<int64_t> first;   // prototype k: rows[first[k] .. first[k + 1])
  std::vector<int32_t> rows;

  template <typename Keep>
  ByPrototype(const int32_t* cs, int64_t m, int64_t b, Keep keep) : first(b + 1, 0) {
    for (int64_t i = 0; i < m; ++i)
      if (cs[i] >= 0 && cs[i] < b && keep(cs[i])) ++first[cs[i] + 1];
    for (int64_t k = 0; k < b; ++k) first[k + 1] += first[k];
    const int64_t total = first[b];
    rows.resize(total);
    std::vector<int64_t> fill(first.begin(), first.end() - 1);
    for (int64_t i = 0; i < m; ++i)
      if (cs[i] >= 0 && cs[i] < b && keep(cs[i])) rows[fill[cs[i]]++] = static_cast<int32_t>(i);
    parts = kScatterParts < b ? kScatterParts : b;
    cut.assign(parts + 1, b);
    cut[0] = 0;
    for (int64_t k = 0, part = 1; k < b && part < parts; ++k)
      while (part < parts && first[k + 1] * parts >= part * total) cut[part++] = k + 1;
  }
};

constexpr auto kEveryPrototype = [](int32_t) { return true; };

constexpr int64_t kGroup = 4;

// visit(k, rows, count) for groups of up to kGroup consecutive rows of each prototype
// k, prototypes in order within a part, parts in parallel: a group's rows are
// independent, so that one row's chain of dependent operations (its dot product's
// tree, its weight's exp) overlaps the next ones'. The next group's features are
// prefetched.
template <typename Visit>
void RunGroups(ffi::ThreadPool& pool, const ByPrototype& by, const float* xs, int64_t d,
               Visit visit) {
  parallel_parts(pool, by.parts, [&](int64_t part) {
    const int64_t end = by.first[by.cut[part + 1]];
    for (int64_t k = by.cut[part]; k < by.cut[part + 1]; ++k) {
      for (int64_t r = by.first[k], stop = by.first[k + 1]; r < stop; r += kGroup) {
        for (int64_t q = r + kGroup; q < r + 2 * kGroup && q < end; ++q)
          PrefetchRow(xs + by.rows[q] * d, d);
        visit(k, by.rows.data() + r, stop - r < kGroup ? stop - r : kGroup);
      }
    }
  });
}

ffi::Error OwnSimsImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                       ffi::Buffer<ffi::F32> protos, ffi::Buffer<ffi::S32> c,
                       ffi::ResultBuffer<ffi::F32> out) {
  auto xd = x.dimensions(), pd = protos.dimensions();
  if (xd.size() != 2 || pd.size() != 2 || pd[1] != xd[1] || c.element_count() != xd[0] ||
      pd[0] == 0)
    return ffi::Error::InvalidArgument("afj_own_sims: shapes [M, d], [B, d] (B >= 1), [M]");
  const int64_t m = xd[0], d = xd[1], b = pd[0];
  const float* xs = x.typed_data();
  const float* ps = protos.typed_data();
  const int32_t* cs = c.typed_data();
  float* o = out->typed_data();
  if (d == 0) {
    std::memset(o, 0, sizeof(float) * m);
    return ffi::Error::Success();
  }
  const TreeDotFn dot = TreeDotFor(d);
  int64_t parts = (m + kRowsPerPart - 1) / kRowsPerPart;
  parallel_parts(pool, parts, [&](int64_t part) {
    std::vector<float> buf(d);
    int64_t lo = part * kRowsPerPart, hi = lo + kRowsPerPart < m ? lo + kRowsPerPart : m;
    // The gather clamps an index outside [0, B) as XLA's does.
    for (int64_t i = lo; i < hi; ++i) o[i] = dot(xs + i * d, ps + Clamp(cs[i], b) * d, d,
                                                     buf.data());
  });
  return ffi::Error::Success();
}

// The loss's gradient rows, g_k = sum over i with c_i = k of -(w_i / tau) f_i (rows
// added in index order), with w_i = Weight(a_{c_i}, s_i, tau).
// Shapes: x [M, d], a [B], tau []; the kernels below check them.
bool GradShapes(ffi::Span<const int64_t> xd, int64_t a_count, int64_t tau_count,
                ffi::Span<const int64_t> od) {
  return xd.size() == 2 && od.size() == 2 && od[1] == xd[1] && a_count == od[0] &&
         a_count >= 1 && tau_count == 1;
}

// afj_own_sims_grad: one pass over the features for the own similarities s_i (as
// afj_own_sims) and, from them, the weights w_i and the gradient rows g_k (as
// afj_grad_rows) of the assignment c; the caller corrects g with afj_fix_grad
// once it knows which features changed prototype.
ffi::Error OwnSimsGradImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                           ffi::Buffer<ffi::F32> protos, ffi::Buffer<ffi::S32> c,
                           ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> tau,
                           ffi::ResultBuffer<ffi::F32> s_out, ffi::ResultBuffer<ffi::F32> w_out,
                           ffi::ResultBuffer<ffi::F32> g_out) {
  auto xd = x.dimensions(), pd = protos.dimensions(), od = g_out->dimensions();
  if (!GradShapes(xd, a.element_count(), tau.element_count(), od) || pd.size() != 2 ||
      pd[0] != od[0] || pd[1] != xd[1] || c.element_count() != xd[0])
    return ffi::Error::InvalidArgument(
        "afj_own_sims_grad: shapes [M, d], [B, d], [M], [B], [] -> [M], [M], [B, d] (B >= 1)");
  const int64_t m = xd[0], d = xd[1], b = pd[0];
  const float* xs = x.typed_data();
  const float* ps = protos.typed_data();
  const int32_t* cs = c.typed_data();
  const float* as = a.typed_data();
  const float t = tau.typed_data()[0];
  float* so = s_out->typed_data();
  float* wo = w_out->typed_data();
  float* g = g_out->typed_data();
  std::memset(g, 0, sizeof(float) * b * d);
  if (d == 0) {
    for (int64_t i = 0; i < m; ++i) so[i] = 0.0f, wo[i] = Weight(as[Clamp(cs[i], b)], 0.0f, t);
    return ffi::Error::Success();
  }
  const TreeDotFn dot = TreeDotFor(d);
  std::vector<float> buf(d);
  for (int64_t i = 0; i < m; ++i) {
    // A row outside [0, B) adds nothing; its s and w take the clamped index, as XLA's gathers.
    if (cs[i] >= 0 && cs[i] < b) continue;
    const int64_t k = Clamp(cs[i], b);
    so[i] = dot(xs + i * d, ps + k * d, d, buf.data());
    wo[i] = Weight(as[k], so[i], t);
  }
  RunGroups(pool, ByPrototype(cs, m, b, kEveryPrototype), xs, d,
            [&](int64_t k, const int32_t* rows, int64_t count) {
    thread_local std::vector<float> v;
    if (static_cast<int64_t>(v.size()) < kGroup * d) v.resize(kGroup * d);
    for (int64_t j = 0; j < count; ++j)
      so[rows[j]] = dot(xs + rows[j] * d, ps + k * d, d, v.data() + j * d);
    for (int64_t j = 0; j < count; ++j) wo[rows[j]] = Weight(as[k], so[rows[j]], t);
    AddRows(g + k * d, xs, rows, count, wo, t, d);
  });
  return ffi::Error::Success();
}

// afj_grad_rows: the weights and gradient rows of assignment c given the own
// similarities s: [M, d], [M], [M], [B], [] -> [M], [B, d].
ffi::Error GradRowsImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> s,
                        ffi::Buffer<ffi::S32> c, ffi::Buffer<ffi::F32> a,
                        ffi::Buffer<ffi::F32> tau, ffi::ResultBuffer<ffi::F32> w_out,
                        ffi::ResultBuffer<ffi::F32> g_out) {
  auto xd = x.dimensions(), od = g_out->dimensions();
  if (!GradShapes(xd, a.element_count(), tau.element_count(), od) ||
      s.element_count() != xd[0] || c.element_count() != xd[0])
    return ffi::Error::InvalidArgument(
        "afj_grad_rows: shapes [M, d], [M], [M], [B], [] -> [M], [B, d] (B >= 1)");
  const int64_t m = xd[0], d = xd[1], b = od[0];
  const float* xs = x.typed_data();
  const float* ss = s.typed_data();
  const int32_t* cs = c.typed_data();
  const float* as = a.typed_data();
  const float t = tau.typed_data()[0];
  float* wo = w_out->typed_data();
  float* g = g_out->typed_data();
  std::memset(g, 0, sizeof(float) * b * d);
  for (int64_t i = 0; i < m; ++i)
    if (cs[i] < 0 || cs[i] >= b) wo[i] = Weight(as[Clamp(cs[i], b)], ss[i], t);
  RunGroups(pool, ByPrototype(cs, m, b, kEveryPrototype), xs, d,
            [&](int64_t k, const int32_t* rows, int64_t count) {
    for (int64_t j = 0; j < count; ++j) wo[rows[j]] = Weight(as[k], ss[rows[j]], t);
    AddRows(g + k * d, xs, rows, count, wo, t, d);
  });
  return ffi::Error::Success();
}

// afj_fix_grad: afj_grad_rows of (s, c), given afj_own_sims_grad's (s0, w0, g0) of an
// earlier assignment c0 of the same features and prototypes (same a, tau). A row of
// g0 stays when none of its features changed prototype or similarity (its sum then
// has the same terms in the same order); the others are summed again over their
// features. g0 [B, d] is updated in place: [M, d], [M], [M], [B], [], [M], [M], [M],
// [B, d] -> [M], [B, d].
ffi::Error FixGradImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> s,
                       ffi::Buffer<ffi::S32> c, ffi::Buffer<ffi::F32> a,
                       ffi::Buffer<ffi::F32> tau, ffi::Buffer<ffi::F32> s0,
                       ffi::Buffer<ffi::S32> c0, ffi::Buffer<ffi::F32> w0,
                       ffi::Buffer<ffi::F32> g0, ffi::ResultBuffer<ffi::F32> w_out,
                       ffi::ResultBuffer<ffi::F32> g_out) {
  auto xd = x.dimensions(), od = g_out->dimensions();
  const int64_t m = xd.size() == 2 ? xd[0] : -1;
  if (!GradShapes(xd, a.element_count(), tau.element_count(), od) || s.element_count() != m ||
      c.element_count() != m || s0.element_count() != m || c0.element_count() != m ||
      w0.element_count() != m || g0.element_count() != od[0] * od[1])
    return ffi::Error::InvalidArgument(
        "afj_fix_grad: shapes [M, d], [M], [M], [B], [], [M], [M], [M], [B, d] -> [M], [B, d]");
  const int64_t d = xd[1], b = od[0];
  const float* xs = x.typed_data();
  const float* ss = s.typed_data();
  const int32_t* cs = c.typed_data();
  const float* as = a.typed_data();
  const float t = tau.typed_data()[0];
  const float* s0s = s0.typed_data();
  const int32_t* c0s = c0.typed_data();
  const float* w0s = w0.typed_data();
  float* wo = w_out->typed_data();
  float* g = g_out->typed_data();
  if (g != g0.typed_data()) std::memcpy(g, g0.typed_data(), sizeof(float) * b * d);
  std::vector<uint8_t> dirty(b, 0);
  int64_t changed = 0;
  for (int64_t i = 0; i < m; ++i) {
    uint32_t bits, bits0;
    std::memcpy(&bits, ss + i, 4);
    std::memcpy(&bits0, s0s + i, 4);
    if (cs[i] == c0s[i] && bits == bits0) {
      wo[i] = w0s[i];
      continue;
    }
    ++changed;
    wo[i] = Weight(as[Clamp(cs[i], b)], ss[i], t);
    if (c0s[i] >= 0 && c0s[i] < b) dirty[c0s[i]] = 1;
    if (cs[i] >= 0 && cs[i] < b) dirty[cs[i]] = 1;
  }
  if (changed == 0 || d == 0) return ffi::Error::Success();
  for (int64_t k = 0; k < b; ++k)
    if (dirty[k]) std::memset(g + k * d, 0, sizeof(float) * d);
  RunGroups(pool, ByPrototype(cs, m, b, [&](int32_t k) { return dirty[k] != 0; }), xs, d,
            [&](int64_t k, const int32_t* rows, int64_t count) {
    AddRows(g + k * d, xs, rows, count, wo, t, d);
  });
  return ffi::Error::Success();
}

ffi::Error OpenRowsImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F16> gap,
                        ffi::Buffer<ffi::F32> travel, ffi::Buffer<ffi::F32> limit,
                        ffi::Buffer<ffi::F32> rowmin, ffi::Buffer<ffi::F32> turned,
                        ffi::ResultBuffer<ffi::PRED> out, ffi::ResultBuffer<ffi::F32> rowmin_out) {
  auto gd = gap.dimensions();
  if (gd.size() != 2 || travel.element_count() != gd[1] || limit.element_count() != gd[0] ||
      rowmin.element_count() != gd[0] || turned.element_count() != 1)
    return ffi::Error::InvalidArgument("afj_open_rows: shapes [M, B] f16, [B], [M], [M], []");
  const int64_t m = gd[0], b = gd[1];
  const uint16_t* g = reinterpret_cast<const uint16_t*>(gap.typed_data());
  const float* t = travel.typed_data();
  const float* l = limit.typed_data();
  const float* r_in = rowmin.typed_data();
  const float psi = turned.typed_data()[0];
  bool* o = out->typed_data();
  float* r_out = rowmin_out->typed_data();
  int64_t parts = (m + kRowsPerPart - 1) / kRowsPerPart;
  parallel_parts(pool, parts, [&](int64_t part) {
    int64_t lo = part * kRowsPerPart, hi = lo + kRowsPerPart < m ? lo + kRowsPerPart : m;
    for (int64_t i = lo; i < hi; ++i) {
      // The row bound: no pair can be open when rowmin - psi clears the limit (with
      // slack for the few roundings between them); then the row is not read.
      const float head = r_in[i] - psi - l[i];
      const float slack =
          1e-5f + 8 * FLT_EPSILON * (std::fabs(r_in[i]) + std::fabs(psi) + std::fabs(l[i]));
      if (head > slack) {  // (false for -inf and NaN)
        o[i] = false;
        r_out[i] = r_in[i];
        continue;
      }
      const uint16_t* gi = g + i * b;
      const __m256 li = _mm256_set1_ps(l[i]);
      __m256 lowest = _mm256_set1_ps(INFINITY);
      bool open = false;
      int64_t k = 0;
      for (; k + 8 <= b && !open; k += 8) {
        const __m256 v = Slack8(gi + k, t + k);
        open = Within8(v, li) != 0;
        lowest = _mm256_min_ps(lowest, v);
      }
      float low = INFINITY;
      alignas(32) float lanes[8];
      _mm256_store_ps(lanes, lowest);
      for (int e = 0; e < 8; ++e) low = lanes[e] < low ? lanes[e] : low;
      for (; k < b && !open; ++k) {
        const float v = Slack(gi[k], t[k]);
        open = v <= l[i];
        low = v < low ? v : low;
      }
      o[i] = open;
      // A row with an open pair is refreshed this step: read it again next time.
      r_out[i] = open ? -INFINITY : low + psi;
    }
  });
  return ffi::Error::Success();
}

constexpr uint16_t kHalfInf = 0x7c00;

inline float HorizontalSum(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
  __m128 s = _mm_add_ps(lo, hi);
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

// The vector of the refresh's dot products: 16 lanes where the CPU has AVX-512, else 8;
// kMaxRows vectors share one load of the other operand (as many as the registers hold:
// two accumulators a vector).
#if defined(__AVX512F__)
struct Lanes {
  using V = __m512;
  static constexpr int64_t kWidth = 16;
  static constexpr int kMaxRows = 8;
  static V Zero() { return _mm512_setzero_ps(); }
  static V Load(const float* p) { return _mm512_loadu_ps(p); }
  // The first n (0 < n < kWidth) floats at p, zeros after (nothing past them is read).
  static V LoadFirst(const float* p, int64_t n) {
    return _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << n) - 1), p);
  }
  static V Fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static float Sum(V a, V b) { return _mm512_reduce_add_ps(_mm512_add_ps(a, b)); }
};
#else
struct Lanes {
  using V = __m256;
  static constexpr int64_t kWidth = 8;
  static constexpr int kMaxRows = 4;
  static V Zero() { return _mm256_setzero_ps(); }
  static V Load(const float* p) { return _mm256_loadu_ps(p); }
  static V LoadFirst(const float* p, int64_t n) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_maskload_ps(p, _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)), lane));
  }
  static V Fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static float Sum(V a, V b) { return HorizontalSum(_mm256_add_ps(a, b)); }
};
#endif

// dot(p, x_r) for r < R: two accumulators of Lanes::kWidth lanes per x_r and fused
// multiply-adds (2R independent chains), the last d mod kWidth products in lanes of
// their own; within ~(d / (2 kWidth) + 5) ulps of the exact sum, far inside the margin.
// The value does not depend on R, on which vectors are grouped, or on which operand is
// p (a product rounds the same either way). (The loops are unrolled so that the
// accumulators stay in registers: indexed arrays would live on the stack.)
template <int R>
inline void DotsR(const float* p, const float* const* x, int64_t d, float* out) {
  using V = Lanes::V;
  constexpr int64_t w = Lanes::kWidth;
  V a0[R], a1[R];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) a0[r] = a1[r] = Lanes::Zero();
  int64_t j = 0;
  for (; j + 2 * w <= d; j += 2 * w) {
    const V p0 = Lanes::Load(p + j), p1 = Lanes::Load(p + j + w);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      a0[r] = Lanes::Fma(Lanes::Load(x[r] + j), p0, a0[r]);
      a1[r] = Lanes::Fma(Lanes::Load(x[r] + j + w), p1, a1[r]);
    }
  }
  if (j + w <= d) {
    const V p0 = Lanes::Load(p + j);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) a0[r] = Lanes::Fma(Lanes::Load(x[r] + j), p0, a0[r]);
    j += w;
  }
  if (j < d) {
    const V p1 = Lanes::LoadFirst(p + j, d - j);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) a1[r] = Lanes::Fma(Lanes::LoadFirst(x[r] + j, d - j), p1, a1[r]);
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) out[r] = Lanes::Sum(a0[r], a1[r]);
}

inline void Dots(const float* p, const float* const* x, int count, int64_t d, float* out) {
  switch (count) {
#if defined(__AVX512F__)
    case 8: DotsR<8>(p, x, d, out); break;
    case 7: DotsR<7>(p, x, d, out); break;
    case 6: DotsR<6>(p, x, d, out); break;
    case 5: DotsR<5>(p, x, d, out); break;
#endif
    case 4: DotsR<4>(p, x, d, out); break;
    case 3: DotsR<3>(p, x, d, out); break;
    case 2: DotsR<2>(p, x, d, out); break;
    default: DotsR<1>(p, x, d, out); break;
  }
}

// out[q] = xi . p_{ks[q]} for q < n, Lanes::kMaxRows prototypes at a time sharing the
// row's loads, each dot product as `Dots` takes it.
inline void RowDots(const float* xi, const float* ps, int64_t d, const int32_t* ks, int32_t n,
                    float* out) {
  for (int32_t u = 0; u < n; u += Lanes::kMaxRows) {
    const int cnt = n - u < Lanes::kMaxRows ? n - u : Lanes::kMaxRows;
    const float* p[Lanes::kMaxRows];
    for (int j = 0; j < cnt; ++j) p[j] = ps + static_cast<int64_t>(ks[u + j]) * d;
    Dots(xi, p, cnt, d, out + u);
  }
}

// arccos(x) to within 6.7e-5 (Abramowitz & Stegun 4.4.45) on 8 lanes, as prototypes.py's
// _acos_poly: the same polynomial, clipped to [-1, 1].
inline __m256 AcosPoly8(__m256 x) {
  const __m256 one = _mm256_set1_ps(1.0f);
  __m256 a = _mm256_min_ps(_mm256_andnot_ps(_mm256_set1_ps(-0.0f), x), one);
  __m256 poly = _mm256_add_ps(_mm256_set1_ps(0.0742610f),
                              _mm256_mul_ps(a, _mm256_set1_ps(-0.0187293f)));
  poly = _mm256_add_ps(_mm256_set1_ps(-0.2121144f), _mm256_mul_ps(a, poly));
  poly = _mm256_add_ps(_mm256_set1_ps(1.5707288f), _mm256_mul_ps(a, poly));
  __m256 p = _mm256_mul_ps(_mm256_sqrt_ps(_mm256_sub_ps(one, a)), poly);
  __m256 neg = _mm256_sub_ps(_mm256_set1_ps(3.14159265f), p);
  return _mm256_blendv_ps(neg, p, _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_GE_OQ));
}

// A pair's stored bound from its similarity s and its prototype's travel t, on 8 lanes:
// acos_lower(s + margin) + t (prototypes.py's angle_lower, plus t) as float16 rounded
// towards -inf, so it stays a lower bound.
inline __m128i AngleBound8(__m256 s, __m256 t, __m256 margin, __m256 acos_err) {
  __m256 v = _mm256_sub_ps(AcosPoly8(_mm256_add_ps(s, margin)), acos_err);
  return _mm256_cvtps_ph(_mm256_add_ps(v, t), _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
}

// The largest of v[0 .. n) and the largest of the others: returns the index of the first
// of the largest (-1 when n = 0, with both values -inf).
inline int32_t BestTwo(const float* v, int32_t n, float* best, float* second) {
#if defined(__AVX512F__)
  // Three passes of 16 lanes (max; the first lane equal to it; the max of the others)
  // instead of a loop with a data-dependent branch per value.
  const __m512 ninf = _mm512_set1_ps(-INFINITY);
  auto lanes = [n](int32_t q) -> __mmask16 {
    return n - q >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << (n - q)) - 1);
  };
  __m512 m = ninf;
  for (int32_t q = 0; q < n; q += 16) m = _mm512_max_ps(m, _mm512_mask_loadu_ps(ninf, lanes(q), v + q));
  const float b = _mm512_reduce_max_ps(m);
  int32_t at = -1;
  for (int32_t q = 0; q < n && at < 0; q += 16) {
    const __mmask16 eq = _mm512_mask_cmp_ps_mask(lanes(q), _mm512_mask_loadu_ps(ninf, lanes(q), v + q),
                                                 _mm512_set1_ps(b), _CMP_EQ_OQ);
    if (eq) at = q + __builtin_ctz(eq);
  }
  __m512 m2 = ninf;
  for (int32_t q = 0; q < n; q += 16) {
    __mmask16 k = lanes(q);
    if (static_cast<uint32_t>(at - q) < 16) k &= static_cast<__mmask16>(~(1u << (at - q)));
    m2 = _mm512_max_ps(m2, _mm512_mask_loadu_ps(ninf, k, v + q));
  }
  *best = at < 0 ? -INFINITY : v[at];
  *second = _mm512_reduce_max_ps(m2);
  return at;
#else
  float b = -INFINITY, s = -INFINITY;
  int32_t at = -1;
  for (int32_t q = 0; q < n; ++q) {
    if (v[q] > b) {
      s = b;
      b = v[q];
      at = q;
    } else if (v[q] > s) {
      s = v[q];
    }
  }
  *best = b;
  *second = s;
  return at;
#endif
}

constexpr int64_t kRefreshRowsPerPart = 128;

// Per-thread buffers of the refresh, grown as needed and kept between calls.
struct Scratch {
  std::vector<int32_t> ks;
  std::vector<float> sc;
};

template <typename T>
T* Grow(std::vector<T>& v, int64_t n) {
  if (static_cast<int64_t>(v.size()) < n) v.resize(n);
  return v.data();
}

// AppendWithin writes up to this many entries past its last one.
constexpr int64_t kAppendSlack = 16;

#if defined(__AVX512F__)
// The 16-lane part of the appends below: for k = *k0, *k0 + 16, .. while a whole 16 fit in
// b, appends (in order) each k + e, k + e != skip, whose bit e is set in mask16(k), and
// leaves *k0 at the first k not taken; returns the new end (writing up to kAppendSlack
// entries past it).
template <typename Mask16>
inline int32_t* AppendLanes16(int64_t* k0, int64_t b, int32_t skip, Mask16 mask16,
                              int32_t* out) {
  __m512i idx = _mm512_add_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
                                                   13, 14, 15),
                                 _mm512_set1_epi32(static_cast<int>(*k0)));
  const __m512i step = _mm512_set1_epi32(16);
  int64_t k = *k0;
  for (; k + 16 <= b; k += 16) {
    __mmask16 m = mask16(k);
    if (static_cast<uint64_t>(skip - k) < 16) m &= static_cast<__mmask16>(~(1u << (skip - k)));
    _mm512_storeu_si512(out, _mm512_maskz_compress_epi32(m, idx));
    out += __builtin_popcount(m);
    idx = _mm512_add_epi32(idx, step);
  }
  *k0 = k;
  return out;
}
#endif

// Appends to `out` each k < b, k != skip, with float(gap_k) - t_k <= reach (in order of
// k) and returns the new end; writes up to kAppendSlack entries past it.
inline int32_t* AppendWithin(const uint16_t* gap, const float* t, int64_t b, float reach,
                             int32_t skip, int32_t* out) {
  int64_t k = 0;
#if defined(__AVX512F__)
  const __m512 r = _mm512_set1_ps(reach);
  out = AppendLanes16(&k, b, skip, [&](int64_t k) {
    const __m512 gv = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(gap + k)));
    return _mm512_cmp_ps_mask(_mm512_sub_ps(gv, _mm512_loadu_ps(t + k)), r, _CMP_LE_OQ);
  }, out);
#else
  const __m256 r = _mm256_set1_ps(reach);
  for (; k + 8 <= b; k += 8) {
    int mask = WithinMask8(gap + k, t + k, r);
    if (static_cast<uint64_t>(skip - k) < 8) mask &= ~(1 << (skip - k));
    while (mask) {
      *out++ = static_cast<int32_t>(k + __builtin_ctz(mask));
      mask &= mask - 1;
    }
  }
#endif
  for (; k < b; ++k)
    if (k != skip && Within(gap[k], t[k], reach)) *out++ = static_cast<int32_t>(k);
  return out;
}

#if defined(AFJ_AMX)
// The refresh of rows with many pairs near opening, on the CPU's matrix unit (AMX):
// all B similarities of up to 16 rows at a time, from bfloat16 copies of the rows and
// of the prototypes, summed in float32 by the tile unit.

// Linux hands the tile state to a process that asks for it (once, for all its threads).
bool AmxUsable() {
  static const bool ok = [] {
    constexpr long kReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return ok;
}

// Every tile: 16 rows of 64 bytes (C: 16 x 16 float32; A: 16 x 32 bfloat16; B: 16 x 16
// pairs of bfloat16).
struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
  TileConfig() {
    for (int t = 0; t < 8; ++t) {
      colsb[t] = 64;
      rows[t] = 16;
    }
  }
};

// The d floats at x as bfloat16 (round to nearest even), zeros from d up to dp.
inline void ToBf16(const float* x, int64_t d, int64_t dp, uint16_t* out) {
  int64_t j = 0;
  for (; j < d; j += 16) {
    const __mmask16 mk = d - j >= 16 ? static_cast<__mmask16>(0xFFFF)
                                     : static_cast<__mmask16>((1u << (d - j)) - 1);
    const __m256bh h = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(mk, x + j));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + j), reinterpret_cast<const __m256i&>(h));
  }
  for (; j < dp; ++j) out[j] = 0;  // (j ran past d to a multiple of 16: those are zeros too)
}

// A bound on |approximation - x . p| for unit vectors x and p (norms up to 1.001) with dp
// padded entries: each bfloat16 rounding moves an entry by at most 2^-8 of itself, so the
// products by at most (2^-7 + 2^-16) |x_j p_j| (sum <= |x| |p|); the tile unit's float32
// sums add at most gamma_dp = dp u / (1 - dp u) of the sum of |products|, with u = 2^-23
// whatever its rounding. A second gamma_dp covers the float32 dot products that
// the candidates get (`Dots`), and 1e-6 the rest (flushed subnormals, the threshold's
// own rounding).
inline float AmxError(int64_t dp) {
  const double u = std::ldexp(1.0, -23), gamma = dp * u / (1 - dp * u);
  const double e = 1.001 * (std::ldexp(1.0, -7) + std::ldexp(1.0, -16) +
                            gamma * (1 + std::ldexp(1.0, -8)) * (1 + std::ldexp(1.0, -8)));
  return static_cast<float>(e + 1.001 * gamma + 1e-6);
}

// The prototypes as the tile unit's B operand: for tile nt (prototypes 16 nt ..) and
// chunk q (entries 32 q ..), 16 rows of 16 words (pairs of bfloat16), row w holding
// entries 32 q + 2 w and + 1 of each prototype: out[((nt * chunks + q) * 16 + w) * 16 + k].
// Prototypes past b and entries past d are zeros.
void PackPrototypes(const float* ps, int64_t b, int64_t d, int64_t bp, int64_t dp,
                    uint32_t* out) {
  alignas(64) uint16_t row[4096];
  const int64_t chunks = dp / 32;
  for (int64_t k = 0; k < bp; ++k) {
    for (int64_t j0 = 0; j0 < dp; j0 += 4096) {
      const int64_t len = dp - j0 < 4096 ? dp - j0 : 4096;
      const int64_t real = k >= b ? 0 : (d - j0 < 0 ? 0 : (d - j0 < len ? d - j0 : len));
      ToBf16(ps + k * d + j0, real, len, row);
      const uint32_t* words = reinterpret_cast<const uint32_t*>(row);
      for (int64_t w = 0; w < len / 2; ++w) {
        const int64_t at = j0 / 2 + w, q = at / 16;
        out[(((k / 16) * chunks + q) * 16 + at % 16) * 16 + k % 16] = words[w];
      }
    }
  }
}

// approx[r * bp + k] ~ x_{rows[r]} . p_k for r < n <= 16 and k < bp, from `pv`
// (`PackPrototypes`). Scratch: `xb` (16 * dp bfloat16).
void AmxBlock(const float* xs, int64_t d, int64_t dp, const int32_t* rows, int n,
              const uint32_t* pv, int64_t bp, uint16_t* xb, float* approx) {
  // The rows as the A operand, in bfloat16: 16 rows of dp entries (zeros past n).
  for (int r = 0; r < 16; ++r) {
    if (r < n) ToBf16(xs + static_cast<int64_t>(rows[r]) * d, d, dp, xb + r * dp);
    else std::memset(xb + r * dp, 0, sizeof(uint16_t) * dp);
  }
  const int64_t chunks = dp / 32, tiles = bp / 16;
  for (int64_t nt = 0; nt < tiles; nt += 2) {
    const bool two = nt + 1 < tiles;
    _tile_zero(0);
    _tile_zero(1);
    for (int64_t q = 0; q < chunks; ++q) {
      _tile_loadd(4, xb + q * 32, dp * 2);
      _tile_loadd(6, pv + (nt * chunks + q) * 256, 64);
      _tile_dpbf16ps(0, 4, 6);
      if (two) {
        _tile_loadd(7, pv + ((nt + 1) * chunks + q) * 256, 64);
        _tile_dpbf16ps(1, 4, 7);
      }
    }
    _tile_stored(0, approx + nt * 16, bp * 4);
    if (two) _tile_stored(1, approx + (nt + 1) * 16, bp * 4);
  }
}
#endif

// Appends to `out` each k < b, k != skip, with v_k >= floor (in order of k) and returns
// the new end; writes up to kAppendSlack entries past it.
inline int32_t* AppendAtLeast(const float* v, int64_t b, float floor, int32_t skip,
                              int32_t* out) {
  int64_t k = 0;
#if defined(__AVX512F__)
  const __m512 f = _mm512_set1_ps(floor);
  out = AppendLanes16(&k, b, skip, [&](int64_t k) {
    return _mm512_cmp_ps_mask(_mm512_loadu_ps(v + k), f, _CMP_GE_OQ);
  }, out);
#endif
  for (; k < b; ++k)
    if (k != skip && v[k] >= floor) *out++ = static_cast<int32_t>(k);
  return out;
}

// For each row i with fail_i: the pairs k != c_i with float(gap_ik) - t_k <= l_i + h
// (those open now, and those within h of opening) get their similarity s_ik, a dot
// product. With j the first of them with the largest s_ik, second the next largest,
// and s_i the row's own similarity (own_i): the row takes j when s_ij > s_i; it is
// listed as a near tie (and changes nothing) when the two best of {s_i, s_ik} are
// within `margin`, as the XLA path decides. Otherwise the scored pairs' bounds become
// acos_lower(s_ik + margin) + t_k (rounded down to float16), and when the row moves
// from c to j, gap_ic gets the bound of s_i and gap_ij +inf. Outputs: the new
// assignments, the rows that changed prototype or are near ties (`touched`, in row
// order, padded with M), the near ties alone (`ties`, likewise), their two counts and
// the number of pairs scored in the rows decided here.
ffi::Error RefreshPairsImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> feats,
                            ffi::Buffer<ffi::F32> protos, ffi::Buffer<ffi::F16> gap_in,
                            ffi::Buffer<ffi::F32> travel, ffi::Buffer<ffi::F32> limit,
                            ffi::Buffer<ffi::F32> own, ffi::Buffer<ffi::S32> assign,
                            ffi::Buffer<ffi::PRED> fail, float horizon, float margin,
                            float acos_err, int64_t amx_min,
                            ffi::ResultBuffer<ffi::F16> gap_out,
                            ffi::ResultBuffer<ffi::S32> assign_out,
                            ffi::ResultBuffer<ffi::S32> touched_out,
                            ffi::ResultBuffer<ffi::S32> ties_out,
                            ffi::ResultBuffer<ffi::S32> counts_out,
                            ffi::ResultBuffer<ffi::F32> work_out) {
  auto fd = feats.dimensions(), pd = protos.dimensions(), gd = gap_in.dimensions();
  if (fd.size() != 2 || pd.size() != 2 || gd.size() != 2 || fd[1] != pd[1] ||
      gd[0] != fd[0] || gd[1] != pd[0] || travel.element_count() != pd[0] ||
      limit.element_count() != fd[0] || own.element_count() != fd[0] ||
      assign.element_count() != fd[0] || fail.element_count() != fd[0] ||
      touched_out->element_count() < fd[0] || ties_out->element_count() < fd[0] ||
      counts_out->element_count() != 2)
    return ffi::Error::InvalidArgument("afj_refresh_pairs: bad shapes");
  const int64_t m = fd[0], d = fd[1], b = pd[0];
  const float* xs = feats.typed_data();
  const float* ps = protos.typed_data();
  const float* t = travel.typed_data();
  const float* lim = limit.typed_data();
  const float* s_own = own.typed_data();
  const int32_t* c_in = assign.typed_data();
  const bool* fl = fail.typed_data();
  uint16_t* g = reinterpret_cast<uint16_t*>(gap_out->typed_data());
  if (gap_out->typed_data() != gap_in.typed_data())
    std::memcpy(g, gap_in.typed_data(), sizeof(uint16_t) * m * b);
  int32_t* c_out = assign_out->typed_data();
  std::memcpy(c_out, c_in, sizeof(int32_t) * m);
  const int64_t parts = (m + kRefreshRowsPerPart - 1) / kRefreshRowsPerPart;
  std::vector<std::vector<int32_t>> touched(parts), ties(parts);
  std::vector<int64_t> scored(parts, 0);
  // Rows with at least amx_min pairs to score go to the matrix unit (0: none).
#if defined(AFJ_AMX)
  const bool amx = amx_min > 0 && AmxUsable();
  const int64_t dp = (d + 31) / 32 * 32, bp = (b + 15) / 16 * 16;
  const float amx_err = AmxError(dp);
  // The prototypes in the tile unit's layout, packed by the first part that needs them.
  thread_local std::vector<uint32_t> pbuf;
  uint32_t* pv = amx ? Grow(pbuf, bp * dp / 2) : nullptr;
  std::once_flag packed;
#else
  const bool amx = false;
  (void)amx_min;
#endif
  parallel_parts(pool, parts, [&](int64_t part) {
    const int64_t lo = part * kRefreshRowsPerPart;
    const int64_t hi = lo + kRefreshRowsPerPart < m ? lo + kRefreshRowsPerPart : m;
    // 1. The pairs to score, row by row: ks[start[r] .. start[r + 1]) for the r-th
    //    failing row of the part (rows[r]). (The buffers are the thread's, kept
    //    between calls: allocating them each time costs page faults.)
    thread_local Scratch scratch;
    std::vector<int32_t> failing, rows, start(1, 0), wide;
    for (int64_t i = lo; i < hi; ++i)
      if (fl[i]) failing.push_back(static_cast<int32_t>(i));
    if (failing.empty()) return;
    int32_t* ks = Grow(scratch.ks, static_cast<int64_t>(failing.size()) * b + kAppendSlack);
    int32_t* end = ks;
    for (const int32_t i : failing) {
      int32_t* next = AppendWithin(g + i * b, t, b, lim[i] + horizon, c_in[i], end);
      if (amx && next - end >= amx_min) {
        wide.push_back(i);  // (its pairs are dropped: the matrix unit scores them all)
        continue;
      }
      rows.push_back(i);
      end = next;
      start.push_back(static_cast<int32_t>(end - ks));
    }
    const int64_t np = end - ks;
    scored[part] = np;
    // 2. Their similarities, row by row: the row's features (in the L1 cache) with up to
    //    Lanes::kMaxRows of its prototypes at a time, each dot product as `Dots` takes it.
    float* sc = Grow(scratch.sc, np + 8);
    for (size_t r = 0; r < rows.size(); ++r)
      RowDots(xs + static_cast<int64_t>(rows[r]) * d, ps, d, ks + start[r],
              start[r + 1] - start[r], sc + start[r]);
    // 3. Each row's decision and its refreshed bounds.
    const __m256 vmargin = _mm256_set1_ps(margin), verr = _mm256_set1_ps(acos_err);
    auto bound = [&](float sim, float tk, __m256 m) -> uint16_t {
      return static_cast<uint16_t>(_mm_extract_epi16(
          AngleBound8(_mm256_set1_ps(sim), _mm256_set1_ps(tk), m, verr), 0));
    };
    // A row's decision from its scored pairs (kk[q], similarity vv[q], q < n, in order of
    // k): the first of the best pairs, j, when it beats the own similarity; kTie when the
    // two best of those and the own one are within the margin; else kKeep.
    constexpr int32_t kKeep = -1, kTie = -2;
    auto decide = [&](int64_t i, const int32_t* kk, const float* vv, int32_t n) -> int32_t {
      float best, second;
      const int32_t at = BestTwo(vv, n, &best, &second);
      const int32_t j = at < 0 ? -1 : kk[at];
      const float s = s_own[i];
      const bool win = best > s;
      const float runner = win ? (second > s ? second : s) : best;
      const float top = best > s ? best : s;
      if (runner > -INFINITY && top - runner <= margin) return kTie;
      return win ? j : kKeep;
    };
    auto tie = [&](int64_t i) {
      ties[part].push_back(static_cast<int32_t>(i));
      touched[part].push_back(static_cast<int32_t>(i));
    };
    auto move = [&](int64_t i, int32_t j) {
      uint16_t* gi = g + i * b;
      const int32_t c = c_in[i];
      gi[c] = bound(s_own[i], t[c], vmargin);
      gi[j] = kHalfInf;
      c_out[i] = j;
      touched[part].push_back(static_cast<int32_t>(i));
    };
    for (size_t r = 0; r < rows.size(); ++r) {
      const int64_t i = rows[r];
      uint16_t* gi = g + i * b;
      const int32_t j = decide(i, ks + start[r], sc + start[r], start[r + 1] - start[r]);
      if (j == kTie) {
        scored[part] -= start[r + 1] - start[r];  // (counted as the whole row the caller scores)
        tie(i);
        continue;
      }
      int32_t q = start[r];
      for (; q + 8 <= start[r + 1]; q += 8) {
        const __m256i kv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(&ks[q]));
        alignas(16) uint16_t h[8];
        _mm_store_si128(reinterpret_cast<__m128i*>(h),
                        AngleBound8(_mm256_loadu_ps(&sc[q]), _mm256_i32gather_ps(t, kv, 4),
                                    vmargin, verr));
        for (int e = 0; e < 8; ++e) gi[ks[q + e]] = h[e];
      }
      for (; q < start[r + 1]; ++q) gi[ks[q]] = bound(sc[q], t[ks[q]], vmargin);
      if (j >= 0) move(i, j);
    }
#if defined(AFJ_AMX)
    // 4. The wide rows, 16 at a time on the matrix unit: approximations a_ik of all their
    //    similarities, within amx_err of the exact ones. The pairs with a_ik within
    //    margin + amx_err of the own similarity (any that could beat it or come within
    //    the margin of it) get the exact dot products as above, and the row's decision
    //    from them is the one the pairs above would give. Every other pair's bound
    //    becomes that of a_ik + amx_err (a lower bound on its angle), each pair keeping
    //    the larger of its old bound and the new one.
    if (!wide.empty()) {
      std::call_once(packed, [&] { PackPrototypes(ps, b, d, bp, dp, pv); });
      thread_local std::vector<uint16_t> xbuf;
      thread_local std::vector<float> approx;
      uint16_t* xb = Grow(xbuf, 16 * dp);
      float* ap = Grow(approx, 16 * bp);
      int32_t* kk = Grow(scratch.ks, b + kAppendSlack);
      float* vv = Grow(scratch.sc, b + 8);
      const __m256 vwide = _mm256_set1_ps(margin + amx_err);
      TileConfig config;
      _tile_loadconfig(&config);
      for (size_t w0 = 0; w0 < wide.size(); w0 += 16) {
        const int n = wide.size() - w0 < 16 ? static_cast<int>(wide.size() - w0) : 16;
        AmxBlock(xs, d, dp, wide.data() + w0, n, pv, bp, xb, ap);
        for (int r = 0; r < n; ++r) {
          const int64_t i = wide[w0 + r];
          const int32_t c = c_in[i];
          const float* a = ap + r * bp;
          const int32_t nc = static_cast<int32_t>(
              AppendAtLeast(a, b, s_own[i] - (margin + amx_err), c, kk) - kk);
          RowDots(xs + i * d, ps, d, kk, nc, vv);
          const int32_t j = decide(i, kk, vv, nc);
          if (j == kTie) {
            tie(i);
            continue;
          }
          scored[part] += b;
          uint16_t* gi = g + i * b;
          // gi[k] = the larger of its old bound and `fresh`.
          auto raise = [gi](int64_t k, uint16_t fresh) {
            if (_cvtsh_ss(fresh) > _cvtsh_ss(gi[k])) gi[k] = fresh;
          };
          int64_t k = 0;
          for (; k + 8 <= b; k += 8) {
            const __m128i fresh = AngleBound8(_mm256_loadu_ps(a + k), _mm256_loadu_ps(t + k),
                                              vwide, verr);
            const __m128i old = _mm_loadu_si128(reinterpret_cast<const __m128i*>(gi + k));
            const __m256 larger = _mm256_max_ps(_mm256_cvtph_ps(fresh), _mm256_cvtph_ps(old));
            _mm_storeu_si128(reinterpret_cast<__m128i*>(gi + k),
                             _mm256_cvtps_ph(larger, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC));
          }
          for (; k < b; ++k) raise(k, bound(a[k], t[k], vwide));
          // (The own pair holds +inf, which stays.) The candidates' exact bounds.
          for (int32_t q = 0; q < nc; ++q) raise(kk[q], bound(vv[q], t[kk[q]], vmargin));
          if (j >= 0) move(i, j);
        }
      }
      _tile_release();
      // (touched and ties are listed in row order.)
      std::sort(touched[part].begin(), touched[part].end());
      std::sort(ties[part].begin(), ties[part].end());
    }
#endif
  });
  int32_t* to = touched_out->typed_data();
  int32_t* ti = ties_out->typed_data();
  int64_t nt = 0, nties = 0, work = 0;
  for (int64_t q = 0; q < parts; ++q) {
    for (int32_t i : touched[q]) to[nt++] = i;
    for (int32_t i : ties[q]) ti[nties++] = i;
    work += scored[q];
  }
  for (int64_t r = nt; r < touched_out->element_count(); ++r) to[r] = static_cast<int32_t>(m);
  for (int64_t r = nties; r < ties_out->element_count(); ++r) ti[r] = static_cast<int32_t>(m);
  counts_out->typed_data()[0] = static_cast<int32_t>(nt);
  counts_out->typed_data()[1] = static_cast<int32_t>(nties);
  work_out->typed_data()[0] = static_cast<float>(work);
  return ffi::Error::Success();
}

}  // namespace

// Whether afj_refresh_pairs can use the matrix unit here (built for a CPU with AMX and
// granted by the OS): 1 or 0, for _cpu.amx_usable.
extern "C" int afj_amx_usable() {
#if defined(AFJ_AMX)
  return AmxUsable() ? 1 : 0;
#else
  return 0;
#endif
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(AfjOwnSims, OwnSimsImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(AfjOwnSimsGrad, OwnSimsGradImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(AfjGradRows, GradRowsImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(AfjFixGrad, FixGradImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(AfjOpenRows, OpenRowsImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F16>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::PRED>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(AfjRefreshPairs, RefreshPairsImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F16>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::PRED>>()
                                  .Attr<float>("horizon")
                                  .Attr<float>("margin")
                                  .Attr<float>("acos_err")
                                  .Attr<int64_t>("amx_min")
                                  .Ret<ffi::Buffer<ffi::F16>>()
                                  .Ret<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
