// First line of the file: without it GCC will not if-convert exp_approx's clamps and the softmax
// loops stay scalar (see swiglu.cpp). No floating-point exception flag is ever read.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif
// First line of the file so that every function in it (headers included) shares the option:
// without it GCC will not if-convert the clamps of exp_approx and the hot loops stay scalar. We
// never read floating-point exception flags, so assuming no traps changes no result.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif
#include "nn/attention.h"

#include <algorithm>
#include <cmath>
#include <unordered_map>
#include <vector>

#include "base/blas.h"
#include "base/error.h"
#include "base/parallel.h"
#include "nn/nn_math.h"
#include "nn/vec_exp.h"

namespace ecomllm::nn {
namespace {

constexpr int64_t kTileQ = 64;  // queries per tile
constexpr int64_t kTileK = 64;  // keys per tile

void check_dims(const AttentionDims& d) {
  ECOM_CHECK_ARG(d.B >= 0 && d.T >= 0 && d.H > 0 && d.KV > 0 && d.D > 0, "attention: bad sizes B=", d.B, " T=", d.T,
                 " H=", d.H, " KV=", d.KV, " D=", d.D);
  ECOM_CHECK_ARG(d.H % d.KV == 0, "attention: query heads H=", d.H, " must be a multiple of kv heads KV=", d.KV);
  ECOM_CHECK_ARG(d.window >= 0, "attention: window must be >= 0 (0 = off), got ", d.window);
  ECOM_CHECK_ARG(std::isfinite(d.scale) && d.scale > 0.0f, "attention: scale must be finite and > 0, got ", d.scale);
}

// The visibility rule and the key range each query tile can see (for skipping whole tiles).
class Mask {
 public:
  Mask(const int32_t* seg, const AttentionDims& d) : seg_(seg), T_(d.T), window_(d.window) {
    ntiles_ = (d.T + kTileQ - 1) / kTileQ;
    if (seg_) {  // run_start_[b * T + t]: first position of the run of equal segment ids holding t
      run_start_.resize(static_cast<size_t>(d.B * d.T));
      for (int64_t b = 0; b < d.B; ++b)
        for (int64_t t = 0; t < d.T; ++t) {
          const int64_t i = b * d.T + t;
          run_start_[i] = (t > 0 && seg_[i] == seg_[i - 1]) ? run_start_[i - 1] : t;
        }
    }
    bounds_.resize(d.B * ntiles_);
    std::unordered_map<int32_t, int64_t> first;  // seg value -> first position in the row
    for (int64_t b = 0; b < d.B; ++b) {
      first.clear();
      for (int64_t i = 0; i < ntiles_; ++i) {
        Range& r = bounds_[b * ntiles_ + i];
        for (int64_t t = i * kTileQ; t < std::min(T_, (i + 1) * kTileQ); ++t) {
          int64_t lo = 0;
          if (seg_) {
            const int32_t s = seg_[b * T_ + t];
            if (s < 0) continue;  // padding query: sees nothing
            lo = first.emplace(s, t).first->second;
          }
          if (window_ > 0) lo = std::max(lo, t - window_ + 1);
          r.lo = std::min(r.lo, lo);
          r.hi = std::max(r.hi, t + 1);
        }
      }
    }
  }

  int64_t num_tiles() const { return ntiles_; }
  // Keys [lo, hi) may be visible from some query of query tile i of row b (empty when lo >= hi).
  struct Range {
    int64_t lo = INT64_MAX, hi = 0;
  };
  const Range& bounds(int64_t b, int64_t i) const { return bounds_[b * ntiles_ + i]; }

  // True when every query of [t0, t0 + nq) sees every key of [s0, s0 + nk): the tile lies below the
  // diagonal, inside the window and inside one segment (then no mask needs writing).
  bool all_visible(int64_t b, int64_t t0, int64_t nq, int64_t s0, int64_t nk) const {
    const int64_t t_last = t0 + nq - 1;
    if (s0 + nk - 1 > t0) return false;
    if (window_ > 0 && t_last - s0 >= window_) return false;
    if (seg_) {
      const int64_t i = b * T_ + t_last;
      if (seg_[i] < 0 || run_start_[i] > s0) return false;
    }
    return true;
  }

  // Writes -inf into S[r, c] (row stride ld) where key s0 + c is hidden from query t0 + r; returns
  // the number of visible entries.
  int64_t apply(float* S, int64_t ld, int64_t b, int64_t t0, int64_t nq, int64_t s0, int64_t nk) const {
    const int32_t* sr = seg_ ? seg_ + b * T_ : nullptr;
    int64_t visible = 0;
    for (int64_t r = 0; r < nq; ++r) {
      const int64_t t = t0 + r;
      const int32_t st = sr ? sr[t] : 0;
      float* row = S + r * ld;
      for (int64_t c = 0; c < nk; ++c) {
        const int64_t s = s0 + c;
        const bool vis = s <= t && st >= 0 && (!sr || sr[s] == st) && (window_ == 0 || t - s < window_);
        visible += vis;
        if (!vis) row[c] = kNegInf;
      }
    }
    return visible;
  }

 private:
  const int32_t* seg_;
  int64_t T_, window_, ntiles_;
  std::vector<Range> bounds_;
  std::vector<int64_t> run_start_;
};

// Tile mask state: kAll (every entry visible: no mask array), kNone (nothing visible: skip the
// tile) or kPartial (S holds 0 where visible and -inf where hidden).
enum class TileMask { kAll, kNone, kPartial };

// Zero-padded tile of scores: prefill with 0 so apply() can mark invisible entries before the GEMM
// decides whether to run at all.
TileMask mark_tile(float* S, const Mask& mask, int64_t b, int64_t t0, int64_t nq, int64_t s0, int64_t nk) {
  if (mask.all_visible(b, t0, nq, s0, nk)) return TileMask::kAll;
  for (int64_t r = 0; r < nq; ++r) std::fill_n(S + r * kTileK, nk, 0.0f);
  return mask.apply(S, kTileK, b, t0, nq, s0, nk) == 0 ? TileMask::kNone : TileMask::kPartial;
}

// S = scale * Q K^T (+ S when the tile is partial: S then holds 0 or -inf from mark_tile, so hidden
// entries stay -inf).
void scores(float* S, TileMask tm, const float* Q, int64_t ldq, const float* K, int64_t ldk, int64_t nq, int64_t nk,
            int64_t D, float scale) {
  sgemm(false, true, nq, nk, D, scale, Q, ldq, K, ldk, tm == TileMask::kPartial ? 1.0f : 0.0f, S, kTileK);
}

}  // namespace

void attention_forward(float* out, float* lse, const float* q, const float* k, const float* v, const int32_t* seg,
                       const AttentionDims& d) {
  check_dims(d);
  const int64_t T = d.T, H = d.H, KV = d.KV, D = d.D, group = H / KV;
  const int64_t ldq = H * D, ldk = KV * D;
  const Mask mask(seg, d);
  const int64_t nt = mask.num_tiles();
  // Tasks (b, h, query tile), query tile fastest so every thread gets a mix of cheap and costly tiles.
  parallel_for(0, d.B * H * nt, 1, [&](int64_t w0, int64_t w1) {
    std::vector<float> S(kTileQ * kTileK), O(kTileQ * D), m(kTileQ), l(kTileQ);
    for (int64_t w = w0; w < w1; ++w) {
      const int64_t i = w % nt, h = (w / nt) % H, b = w / (nt * H);
      const int64_t t0 = i * kTileQ, nq = std::min(kTileQ, T - t0), kvh = h / group;
      const float* Q = q + ((b * T + t0) * H + h) * D;
      std::fill_n(O.data(), nq * D, 0.0f);
      std::fill_n(m.data(), nq, kNegInf);
      std::fill_n(l.data(), nq, 0.0f);
      const Mask::Range range = mask.bounds(b, i);
      for (int64_t s0 = range.lo < range.hi ? range.lo / kTileK * kTileK : range.hi; s0 < range.hi; s0 += kTileK) {
        const int64_t nk = std::min(kTileK, T - s0);
        const TileMask tm = mark_tile(S.data(), mask, b, t0, nq, s0, nk);
        if (tm == TileMask::kNone) continue;
        const float* K = k + ((b * T + s0) * KV + kvh) * D;
        const float* V = v + ((b * T + s0) * KV + kvh) * D;
        scores(S.data(), tm, Q, ldq, K, ldk, nq, nk, D, d.scale);
        // Online softmax: rescale the running sums to the new row maximum, add this tile's P.
        for (int64_t r = 0; r < nq; ++r) {
          float* Sr = S.data() + r * kTileK;
          const float mx = max_f32(Sr, nk);
          if (mx == kNegInf) {  // nothing visible in this row of the tile: P row = 0
            std::fill_n(Sr, nk, 0.0f);
            continue;
          }
          const float m_new = std::max(m[r], mx);
          const float alpha = m[r] == kNegInf ? 0.0f : exp_approx(m[r] - m_new);
          exp_shifted_or_zero(Sr, Sr, nk, m_new);
          l[r] = l[r] * alpha + sum_f32(Sr, nk);
          m[r] = m_new;
          float* Or = O.data() + r * D;
          for (int64_t c = 0; c < D; ++c) Or[c] *= alpha;
        }
        sgemm(false, false, nq, D, nk, 1.0f, S.data(), kTileK, V, ldk, 1.0f, O.data(), D);
      }
      for (int64_t r = 0; r < nq; ++r) {
        float* dst = out + ((b * T + t0 + r) * H + h) * D;
        const float inv = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;
        for (int64_t c = 0; c < D; ++c) dst[c] = O[r * D + c] * inv;
        lse[(b * H + h) * T + t0 + r] = l[r] > 0.0f ? m[r] + std::log(l[r]) : 0.0f;
      }
    }
  });
}

void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* q, const float* k,
                        const float* v, const float* out, const float* lse, const int32_t* seg, const AttentionDims& d) {
  check_dims(d);
  const int64_t T = d.T, H = d.H, KV = d.KV, D = d.D, group = H / KV;
  const int64_t ldq = H * D, ldk = KV * D;
  const Mask mask(seg, d);
  const int64_t nt = mask.num_tiles();
  // delta[b,h,t] = rowsum(dout * out), the softmax-backward correction term.
  std::vector<float> delta(d.B * H * T);
  parallel_for(0, d.B * T, 64, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n)
      for (int64_t h = 0; h < H; ++h)
        delta[((n / T) * H + h) * T + n % T] = dot_f32(dout + (n * H + h) * D, out + (n * H + h) * D, D);
  });
  parallel_for(0, d.B * KV, 1, [&](int64_t w0, int64_t w1) {
    // Z: the tile's mask (0 visible, -inf hidden), shared by the query heads of the group.
    std::vector<float> Z(kTileQ * kTileK), P(kTileQ * kTileK), dS(kTileQ * kTileK);
    for (int64_t w = w0; w < w1; ++w) {
      const int64_t b = w / KV, kvh = w % KV;
      for (int64_t s0 = 0; s0 < T; s0 += kTileK) {
        const int64_t nk = std::min(kTileK, T - s0);
        const float* K = k + ((b * T + s0) * KV + kvh) * D;
        const float* V = v + ((b * T + s0) * KV + kvh) * D;
        float* dK = dk + ((b * T + s0) * KV + kvh) * D;
        float* dV = dv + ((b * T + s0) * KV + kvh) * D;
        for (int64_t i = s0 / kTileQ; i < nt; ++i) {
          const Mask::Range range = mask.bounds(b, i);
          if (range.lo >= s0 + nk || range.hi <= s0) continue;
          const int64_t t0 = i * kTileQ, nq = std::min(kTileQ, T - t0);
          const TileMask tm = mark_tile(Z.data(), mask, b, t0, nq, s0, nk);
          if (tm == TileMask::kNone) continue;
          for (int64_t h = kvh * group; h < (kvh + 1) * group; ++h) {
            if (tm == TileMask::kPartial) std::copy_n(Z.data(), nq * kTileK, P.data());
            const float* Q = q + ((b * T + t0) * H + h) * D;
            const float* dO = dout + ((b * T + t0) * H + h) * D;
            float* dQ = dq + ((b * T + t0) * H + h) * D;
            const float* L = lse + (b * H + h) * T + t0;
            const float* dl = delta.data() + (b * H + h) * T + t0;
            // P = exp(scale * Q K^T - lse), 0 where hidden.
            scores(P.data(), tm, Q, ldq, K, ldk, nq, nk, D, d.scale);
            for (int64_t r = 0; r < nq; ++r) {
              float* Pr = P.data() + r * kTileK;
              const float Lr = L[r];
              exp_shifted_or_zero(Pr, Pr, nk, Lr);
            }
            // dV += P^T dO ; dP = dO V^T ; dS = P * (dP - delta)
            sgemm(true, false, nk, D, nq, 1.0f, P.data(), kTileK, dO, ldq, 1.0f, dV, ldk);
            sgemm(false, true, nq, nk, D, 1.0f, dO, ldq, V, ldk, 0.0f, dS.data(), kTileK);
            for (int64_t r = 0; r < nq; ++r) {
              float* dSr = dS.data() + r * kTileK;
              const float* Pr = P.data() + r * kTileK;
              const float dlr = dl[r];
              for (int64_t c = 0; c < nk; ++c) dSr[c] = Pr[c] * (dSr[c] - dlr);
            }
            // dQ += scale * dS K ; dK += scale * dS^T Q
            sgemm(false, false, nq, D, nk, d.scale, dS.data(), kTileK, K, ldk, 1.0f, dQ, ldq);
            sgemm(true, false, nk, D, nq, d.scale, dS.data(), kTileK, Q, ldq, 1.0f, dK, ldk);
          }
        }
      }
    }
  });
}

}  // namespace ecomllm::nn
