// A GRU layer's forward and backward pass on the CPU in float32, for lif_sbi/backends/torch (gru_ops.py).
//
// Written by hand because no library does this: PyTorch's native CPU GRU runs each time step as
// about ten separate ATen ops (and records each for autograd), so on this project's CPU two thirds
// of its forward pass and most of its backward pass are per-op overhead, not arithmetic. Here each
// step is one matrix product (ATen's addmm, i.e. MKL/oneDNN) plus one fused, vectorised loop over
// the gates, and the backward pass computes the weight gradients as a few large products over
// blocks of time steps instead of one small product per step. Formulas: PyTorch's GRU
// (torch.nn.GRU, gate order r, z, n), which is Keras' GRU with reset_after=True:
//   r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)      z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
//   n = tanh(W_in x + b_in + r * (W_hn h + b_hn))   h' = n + z * (h - n)
// Shapes: B batch, T time steps, D input features, H units. Float32 throughout; the inputs read
// through raw pointers are made contiguous first, every buffer made here is.
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

// The file is compiled with -ffast-math so that GCC calls glibc's vectorised expf in the gate
// loops. That option assumes finite values, so exp's argument is clamped first (sigmoid and
// tanh are saturated, in float32, well inside the clamp), and gru_forward checks its inputs:
// the clamp would turn a NaN into a saturated gate, where PyTorch's GRU propagates it.
inline float sigmoid(float x) {
  x = std::fmin(std::fmax(x, -80.0f), 80.0f);
  return 1.0f / (1.0f + std::exp(-x));
}

inline float tanh_(float x) {
  x = std::fmin(std::fmax(x, -40.0f), 40.0f);
  return 2.0f / (1.0f + std::exp(-2.0f * x)) - 1.0f;
}

// time steps per block of the input projection and of the backward pass's weight gradients
constexpr int64_t kBlock = 64;

// One batch row of one time step: the gates from the input part igb (3H) and the recurrent part
// hgb (3H), the new state from the old one hp (H); with Save, r, z, n and hgb's n part too.
template <bool Save>
inline void gate_row(const float* igb, const float* hgb, const float* hp, float* hnext, float* rs, float* zs,
                     float* ns, float* hns, int64_t H) {
#pragma GCC ivdep
  for (int64_t j = 0; j < H; ++j) {
    const float r = sigmoid(igb[j] + hgb[j]);
    const float z = sigmoid(igb[H + j] + hgb[H + j]);
    const float n = tanh_(igb[2 * H + j] + r * hgb[2 * H + j]);
    hnext[j] = n + z * (hp[j] - n);
    if constexpr (Save) {
      rs[j] = r;
      zs[j] = z;
      ns[j] = n;
      hns[j] = hgb[2 * H + j];
    }
  }
}

}  // namespace

// x: (B, T, D); h0: (B, H); w_ih: (3H, D); w_hh: (3H, H); b_ih, b_hh: (3H).
// Returns hs (T+1, B, H), time-major, hs[0] = h0 and hs[t+1] the state after step t; and, if
// `save` (for the backward pass), x_tm (T, B, D), r, z, n and W_hn h + b_hn, each (T, B, H).
// Each saved tensor is a separate buffer of at most T*B*H floats: glibc serves blocks of up to
// 32 MB from its heap once one of that size has been freed, larger ones with a fresh mmap (page
// faults on every call; ad hoc: 94 vs 53 ms for a 501-step forward pass, B = 64, H = 128).
std::vector<torch::Tensor> gru_forward(torch::Tensor x, torch::Tensor h0, torch::Tensor w_ih, torch::Tensor w_hh,
                                       torch::Tensor b_ih, torch::Tensor b_hh, bool save) {
  TORCH_CHECK(x.dim() == 3 && x.scalar_type() == torch::kFloat32 && x.device().is_cpu(), "gru_cpu: x must be a (B, T, D) float32 CPU tensor");
  w_hh = w_hh.contiguous();
  const int64_t B = x.size(0), T = x.size(1), D = x.size(2), H = h0.size(1);
  bool finite = true;
  for (const auto& t : {x, h0, w_ih, w_hh, b_ih, b_hh}) finite = finite && at::isfinite(t).all().item<bool>();
  if (!finite) {  // NaN or inf in: NaN out (and NaN gradients), never a silently finite result
    std::vector<torch::Tensor> out = {torch::full({T + 1, B, H}, NAN, h0.options())};
    if (save) {
      out.push_back(x.transpose(0, 1).contiguous());
      for (int k = 0; k < 4; ++k) out.push_back(torch::full({T, B, H}, NAN, h0.options()));
    }
    return out;
  }
  auto x_tm = x.transpose(0, 1).contiguous();
  // the input part W_i x + b_i of a block of kBlock steps at a time (one buffer for all of T
  // would be over 32 MB at the reference size: see above)
  const int64_t L = std::min(kBlock, T);
  auto ig = torch::empty({L * B, 3 * H}, h0.options());
  auto w_ih_t = w_ih.t();
  auto hs = torch::empty({T + 1, B, H}, h0.options());
  hs[0].copy_(h0);
  std::vector<torch::Tensor> saved;
  if (save) {
    for (int k = 0; k < 4; ++k) saved.push_back(torch::empty({T, B, H}, h0.options()));
  }
  auto hg = torch::empty({B, 3 * H}, h0.options());
  auto w_hh_t = w_hh.t();
  const float* ig_all = ig.data_ptr<float>();  // (s % L) * B + b: step s of the current block
  float* hs_all = hs.data_ptr<float>();
  float* r_all = save ? saved[0].data_ptr<float>() : nullptr;
  float* z_all = save ? saved[1].data_ptr<float>() : nullptr;
  float* n_all = save ? saved[2].data_ptr<float>() : nullptr;
  float* hn_all = save ? saved[3].data_ptr<float>() : nullptr;
  const float* hgp = hg.data_ptr<float>();
  for (int64_t s = 0; s < T; ++s) {
    if (s % L == 0) {
      const int64_t len = std::min(L, T - s);
      auto ig_block = ig.narrow(0, 0, len * B);
      at::addmm_out(ig_block, b_ih, x_tm.narrow(0, s, len).view({len * B, D}), w_ih_t);
    }
    at::addmm_out(hg, b_hh, hs[s], w_hh_t);
    for (int64_t b = 0; b < B; ++b) {
      const float* igb = ig_all + ((s % L) * B + b) * 3 * H;
      const float* hgb = hgp + b * 3 * H;
      const float* hp = hs_all + (s * B + b) * H;
      float* hnext = hs_all + ((s + 1) * B + b) * H;
      const int64_t o = (s * B + b) * H;
      if (save) {
        gate_row<true>(igb, hgb, hp, hnext, r_all + o, z_all + o, n_all + o, hn_all + o, H);
      } else {
        gate_row<false>(igb, hgb, hp, hnext, nullptr, nullptr, nullptr, nullptr, H);
      }
    }
  }
  if (save) {
    saved.insert(saved.begin(), x_tm);
  }
  saved.insert(saved.begin(), hs);
  return saved;
}

// grad_out: (B, T, H), the gradient w.r.t. the outputs hs[1:] (batch-first); grad_last: (B, H),
// w.r.t. the last state; the rest as gru_forward saved them. Returns the gradients w.r.t. x
// (B, T, D), h0 (B, H), w_ih, w_hh, b_ih and b_hh.
std::vector<torch::Tensor> gru_backward(torch::Tensor grad_out, torch::Tensor grad_last, torch::Tensor hs,
                                        torch::Tensor x_tm, torch::Tensor r_s, torch::Tensor z_s, torch::Tensor n_s,
                                        torch::Tensor hn_s, torch::Tensor w_ih, torch::Tensor w_hh) {
  grad_out = grad_out.contiguous();
  const int64_t T = x_tm.size(0), B = x_tm.size(1), D = x_tm.size(2), H = hs.size(2);
  const int64_t L = std::min(kBlock, T);
  auto opts = hs.options();
  auto d_ig = torch::empty({L, B, 3 * H}, opts);  // a block of the gradients w.r.t. x W_ih^T + b_ih
  auto d_hg = torch::empty({L, B, 3 * H}, opts);  // ... and w.r.t. W_hh h + b_hh
  auto dx_tm = torch::empty({T, B, D}, opts);
  auto dw_ih = torch::zeros({3 * H, D}, opts);
  auto dw_hh = torch::zeros({3 * H, H}, opts);
  auto db_ih = torch::zeros({3 * H}, opts);
  auto db_hh = torch::zeros({3 * H}, opts);
  auto dh = grad_last.clone();  // the gradient w.r.t. the state carried back through time
  auto dh_direct = torch::empty({B, H}, opts);
  const float* go = grad_out.data_ptr<float>();
  const float* hs_all = hs.data_ptr<float>();
  const float *r_all = r_s.data_ptr<float>(), *z_all = z_s.data_ptr<float>();
  const float *n_all = n_s.data_ptr<float>(), *hn_all = hn_s.data_ptr<float>();
  float* dig_all = d_ig.data_ptr<float>();
  float* dhg_all = d_hg.data_ptr<float>();
  float* dhp = dh.data_ptr<float>();
  float* ddp = dh_direct.data_ptr<float>();
  for (int64_t end = T; end > 0; end -= L) {
    const int64_t start = std::max<int64_t>(end - L, 0), len = end - start;
    for (int64_t s = end - 1; s >= start; --s) {
      const int64_t k = s - start;  // row block within d_ig, d_hg
      for (int64_t b = 0; b < B; ++b) {
        const int64_t o = (s * B + b) * H;
        const float* gob = go + (b * T + s) * H;
        const float* hp = hs_all + o;  // hs[s]: the state before step s
        const float *rs = r_all + o, *zs = z_all + o, *ns = n_all + o, *hns = hn_all + o;
        float* dig = dig_all + (k * B + b) * 3 * H;
        float* dhg = dhg_all + (k * B + b) * 3 * H;
        float* dhb = dhp + b * H;
        float* ddb = ddp + b * H;
#pragma GCC ivdep
        for (int64_t j = 0; j < H; ++j) {
          const float d = dhb[j] + gob[j];
          const float r = rs[j], z = zs[j], n = ns[j];
          const float da_z = d * (hp[j] - n) * z * (1.0f - z);
          const float da_n = d * (1.0f - z) * (1.0f - n * n);
          const float da_r = da_n * hns[j] * r * (1.0f - r);
          dig[j] = da_r;
          dig[H + j] = da_z;
          dig[2 * H + j] = da_n;
          dhg[j] = da_r;
          dhg[H + j] = da_z;
          dhg[2 * H + j] = da_n * r;
          ddb[j] = d * z;
        }
      }
      at::addmm_out(dh, dh_direct, d_hg[k], w_hh);  // dh = d h_s: direct part + through W_hh h
    }
    auto dig2 = d_ig.narrow(0, 0, len).view({len * B, 3 * H});
    auto dhg2 = d_hg.narrow(0, 0, len).view({len * B, 3 * H});
    auto x2 = x_tm.narrow(0, start, len).view({len * B, D});
    auto h2 = hs.narrow(0, start, len).view({len * B, H});
    dw_ih.addmm_(dig2.t(), x2);
    dw_hh.addmm_(dhg2.t(), h2);
    db_ih.add_(dig2.sum(0));
    db_hh.add_(dhg2.sum(0));
    auto dx2 = dx_tm.narrow(0, start, len).view({len * B, D});
    at::mm_out(dx2, dig2, w_ih);
  }
  return {dx_tm.transpose(0, 1).contiguous(), dh, dw_ih, dw_hh, db_ih, db_hh};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  // without the GIL, so that lif_sbi's gru_many can run GRUs side by side on Python threads
  m.def("forward", &gru_forward, py::call_guard<py::gil_scoped_release>());
  m.def("backward", &gru_backward, py::call_guard<py::gil_scoped_release>());
}
