//! BERT forward pass for sentence encoding (inference only), on candle tensors.
//!
//! Same arithmetic as the Hugging Face BERT the reference runs, arranged for short texts on a
//! CPU: every dense layer is one matrix multiply over all tokens of the batch (`[tokens,
//! hidden]`, not one per text), query/key/value are one fused projection, and the exact
//! (erf) GELU uses a rational erf approximation accurate to float32 rounding instead of a
//! scalar libm call per activation. Bias, residual and activation are one fused element-wise
//! pass on rayon ([`Fused`]): candle's own element-wise ops split large tensors over a
//! second thread pool that contends with rayon on a 2-core machine (measured: ~10% of end-to-
//! end encoding time).

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Module, Result, Shape, Tensor,
};
use candle_nn::{Embedding, LayerNorm, VarBuilder, embedding, layer_norm};
use candle_transformers::models::bert::{Config, HiddenAct};
use rayon::prelude::*;

use crate::quant::{Precision, QuantWeights};

/// A dense layer's weight `[out, in]` and bias `[out]`; the bias is added by [`Fused`]. In a
/// fast mode the weight is also held quantised and the multiply runs in integers.
struct Dense {
    w: Tensor,
    b: Tensor,
    q: Option<QuantWeights>,
    /// The bias as a slice, for the quantised path's fused epilogue.
    bias: Option<Vec<f32>>,
    /// While calibrating: the largest |input| seen per input channel.
    seen: Option<std::sync::Mutex<Vec<f32>>>,
}

impl Dense {
    fn load(vb: VarBuilder, inp: usize, out: usize) -> Result<Self> {
        Ok(Self {
            w: vb.get((out, inp), "weight")?,
            b: vb.get(out, "bias")?,
            q: None,
            bias: None,
            seen: None,
        })
    }

    /// Quantise the weight for `precision` (f32: back to the exact weights), smoothed by the
    /// calibration statistics if any were recorded.
    fn quantise(&mut self, precision: Precision) -> Result<()> {
        let seen = self
            .seen
            .take()
            .map(|m| m.into_inner().unwrap_or_else(|e| e.into_inner()));
        self.bias = match precision {
            Precision::F32 => None,
            _ => Some(self.b.to_vec1::<f32>()?),
        };
        self.q = if precision == Precision::F32 {
            None
        } else {
            let (n, k) = self.w.dims2()?;
            let w = self.w.flatten_all()?.to_vec1::<f32>()?;
            QuantWeights::new(&w, n, k, precision, seen.as_deref())
        };
        Ok(())
    }

    /// `x·Wᵀ` in f32 (recording the input's range while calibrating).
    fn matmul(&self, x: &Tensor) -> Result<Tensor> {
        if let Some(seen) = &self.seen {
            let m = x.abs()?.max(0)?.to_vec1::<f32>()?;
            let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
            seen.iter_mut().zip(m).for_each(|(s, v)| *s = s.max(v));
        }
        x.matmul(&self.w.t()?)
    }

    /// `act(x·Wᵀ + b)`.
    fn forward(&self, x: &Tensor, act: Option<HiddenAct>) -> Result<Tensor> {
        if let (Some(q), Some(bias)) = (&self.q, &self.bias) {
            return x.apply_op1_no_bwd(&QuantFused { q, bias, act });
        }
        self.matmul(x)?.apply_op2_no_bwd(&self.b, &Fused { act })
    }

    /// `x·Wᵀ + b + residual`.
    fn forward_residual(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        if let (Some(q), Some(bias)) = (&self.q, &self.bias) {
            let op = QuantFused { q, bias, act: None };
            return x.apply_op2_no_bwd(residual, &op);
        }
        self.matmul(x)?
            .apply_op3_no_bwd(&self.b, residual, &Fused { act: None })
    }
}

/// `act(x·Wᵀ + b [+ residual])` with quantised weights: bias, residual and activation are
/// applied to each block of output rows as the integer kernel finishes it.
struct QuantFused<'a> {
    q: &'a QuantWeights,
    bias: &'a [f32],
    act: Option<HiddenAct>,
}

impl QuantFused<'_> {
    fn run(&self, s: &CpuStorage, l: &Layout, residual: Option<&[f32]>) -> Result<CpuStorage> {
        let x = f32_input(s, l)?;
        let (k, n) = (self.q.k(), self.q.n());
        let dims = l.dims();
        if dims.len() != 2 || dims[1] != k || self.bias.len() != n {
            candle_core::bail!("quantised dense: expected [tokens, {k}], got {dims:?}")
        }
        let m = dims[0];
        if residual.is_some_and(|r| r.len() != m * n) {
            candle_core::bail!("quantised dense: residual shape")
        }
        let out = match self.act {
            None => self.apply(x, m, residual, |v| v)?,
            Some(HiddenAct::Gelu) => self.apply(x, m, residual, gelu)?,
            Some(HiddenAct::GeluApproximate) => self.apply(x, m, residual, gelu_tanh)?,
            Some(HiddenAct::Relu) => self.apply(x, m, residual, |v: f32| v.max(0.0))?,
        };
        Ok(CpuStorage::F32(out))
    }

    fn apply(
        &self,
        x: &[f32],
        m: usize,
        residual: Option<&[f32]>,
        act: impl Fn(f32) -> f32 + Sync,
    ) -> Result<Vec<f32>> {
        let n = self.q.n();
        self.q
            .matmul_then(x, m, |i, row| match residual {
                Some(r) => {
                    for ((o, &b), &z) in row.iter_mut().zip(self.bias).zip(&r[i * n..(i + 1) * n]) {
                        *o = act(*o + b + z);
                    }
                }
                None => {
                    for (o, &b) in row.iter_mut().zip(self.bias) {
                        *o = act(*o + b);
                    }
                }
            })
            .map_err(|e| candle_core::Error::Msg(e.to_string()))
    }
}

impl CustomOp1 for QuantFused<'_> {
    fn name(&self) -> &'static str {
        "vigil-quant-dense"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = self.run(s, l, None)?;
        Ok((out, Shape::from((l.dims()[0], self.q.n()))))
    }
}

impl CustomOp2 for QuantFused<'_> {
    fn name(&self) -> &'static str {
        "vigil-quant-dense-residual"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let residual = f32_input(s2, l2)?;
        let out = self.run(s1, l1, Some(residual))?;
        Ok((out, Shape::from((l1.dims()[0], self.q.n()))))
    }
}

/// The exact (erf) GELU.
fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf_f32(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// GELU's tanh approximation.
fn gelu_tanh(x: f32) -> f32 {
    let k = (2.0 / std::f32::consts::PI).sqrt();
    0.5 * x * (1.0 + (k * (x + 0.044_715 * x * x * x)).tanh())
}

struct Layer {
    qkv: Dense,
    attn_out: Dense,
    attn_norm: LayerNorm,
    intermediate: Dense,
    output: Dense,
    out_norm: LayerNorm,
}

/// A BERT encoder (embeddings + transformer layers; no pooler).
pub struct Bert {
    word: Embedding,
    position: Embedding,
    token_type: Embedding,
    norm: LayerNorm,
    layers: Vec<Layer>,
    heads: usize,
    head_dim: usize,
    hidden: usize,
    act: HiddenAct,
}

/// Query, key and value projections concatenated into one `hidden -> 3 * hidden` layer, the
/// query part pre-multiplied by `q_scale` (attention's `1/sqrt(head_dim)`, folded into the
/// weights instead of dividing every score).
fn fused_qkv(vb: &VarBuilder, hidden: usize, q_scale: f64) -> Result<Dense> {
    let q = Dense::load(vb.pp("query"), hidden, hidden)?;
    let k = Dense::load(vb.pp("key"), hidden, hidden)?;
    let v = Dense::load(vb.pp("value"), hidden, hidden)?;
    Ok(Dense {
        w: Tensor::cat(&[(q.w * q_scale)?, k.w, v.w], 0)?,
        b: Tensor::cat(&[(q.b * q_scale)?, k.b, v.b], 0)?,
        q: None,
        bias: None,
        seen: None,
    })
}

impl Bert {
    fn dense_layers(&mut self) -> impl Iterator<Item = &mut Dense> {
        self.layers.iter_mut().flat_map(|l| {
            [
                &mut l.qkv,
                &mut l.attn_out,
                &mut l.intermediate,
                &mut l.output,
            ]
        })
    }

    /// Record the largest |input| per channel of every dense layer in the following forward
    /// passes (for [`Bert::quantise`]).
    pub fn start_calibration(&mut self) -> Result<()> {
        for d in self.dense_layers() {
            let k = d.w.dims2()?.1;
            d.seen = Some(std::sync::Mutex::new(vec![0.0; k]));
        }
        Ok(())
    }

    /// Run the dense layers in `precision` from now on. With calibration statistics the int8
    /// weights are smoothed first (SmoothQuant: each input channel's range is split evenly
    /// between activations and weights, so a few outlier channels no longer cost every
    /// other channel its resolution).
    pub fn quantise(&mut self, precision: Precision) -> Result<()> {
        for d in self.dense_layers() {
            d.quantise(precision)?;
        }
        Ok(())
    }

    /// Load from safetensors weights named as in Hugging Face BERT (with or without a
    /// `bert.` prefix), dense layers in exact f32.
    pub fn load(vb: VarBuilder, config: &Config) -> Result<Self> {
        let vb = if vb.contains_tensor("bert.embeddings.word_embeddings.weight") {
            vb.pp("bert")
        } else {
            vb
        };
        let h = config.hidden_size;
        let e = vb.pp("embeddings");
        let eps = config.layer_norm_eps;
        let q_scale = 1.0 / ((h / config.num_attention_heads.max(1)) as f64).sqrt();
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let l = vb.pp(format!("encoder.layer.{i}"));
                Ok(Layer {
                    qkv: fused_qkv(&l.pp("attention.self"), h, q_scale)?,
                    attn_out: Dense::load(l.pp("attention.output.dense"), h, h)?,
                    attn_norm: layer_norm(h, eps, l.pp("attention.output.LayerNorm"))?,
                    intermediate: Dense::load(
                        l.pp("intermediate.dense"),
                        h,
                        config.intermediate_size,
                    )?,
                    output: Dense::load(l.pp("output.dense"), config.intermediate_size, h)?,
                    out_norm: layer_norm(h, eps, l.pp("output.LayerNorm"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            word: embedding(config.vocab_size, h, e.pp("word_embeddings"))?,
            position: embedding(
                config.max_position_embeddings,
                h,
                e.pp("position_embeddings"),
            )?,
            token_type: embedding(config.type_vocab_size, h, e.pp("token_type_embeddings"))?,
            norm: layer_norm(h, eps, e.pp("LayerNorm"))?,
            layers,
            heads: config.num_attention_heads,
            head_dim: h / config.num_attention_heads.max(1),
            hidden: h,
            act: config.hidden_act,
        })
    }

    /// Hidden states `[tokens, hidden]` for sequences packed end to end without padding:
    /// dense layers, layer norms and GELU are per token, so only attention needs the
    /// sequence boundaries, and it runs once per run of equal-length neighbours (callers
    /// sort by length so those runs are long). Equivalent to the padded, masked forward (a
    /// masked logit's weight is exactly zero) without computing the padding.
    pub fn forward_packed(&self, ids: &[&[u32]], types: &[&[u32]]) -> Result<Tensor> {
        let device = candle_core::Device::Cpu;
        let (h, heads, hd) = (self.hidden, self.heads, self.head_dim);
        let total: usize = ids.iter().map(|s| s.len()).sum();
        let flat =
            |v: &[&[u32]]| -> Result<Tensor> { Tensor::from_vec(v.concat(), total, &device) };
        let positions: Vec<u32> = ids.iter().flat_map(|s| 0..s.len() as u32).collect();
        let positions = Tensor::from_vec(positions, total, &device)?;
        let x = self.word.forward(&flat(ids)?)?.apply_op3_no_bwd(
            &self.token_type.forward(&flat(types)?)?,
            &self.position.forward(&positions)?,
            &Fused { act: None },
        )?;
        let mut x = self.norm.forward(&x)?;
        // Runs of consecutive sequences with the same length: (first token, count, length).
        let mut runs: Vec<(usize, usize, usize)> = Vec::new();
        let mut tok = 0;
        for s in ids {
            match runs.last_mut() {
                Some((_, count, len)) if *len == s.len() => *count += 1,
                _ => runs.push((tok, 1, s.len())),
            }
            tok += s.len();
        }
        for layer in &self.layers {
            let qkv = layer.qkv.forward(&x, None)?;
            let mut ctxs = Vec::with_capacity(runs.len());
            for &(start, n, len) in &runs {
                // One copy into [3, n, heads, len, head_dim]; q, k and v are views of it.
                let part = qkv
                    .narrow(0, start, n * len)?
                    .reshape((n, len, 3, heads, hd))?
                    .permute((2, 0, 3, 1, 4))?
                    .contiguous()?;
                let (q, k, v) = (part.get(0)?, part.get(1)?, part.get(2)?);
                let probs = candle_nn::ops::softmax_last_dim(&q.matmul(&k.t()?)?)?;
                ctxs.push(probs.matmul(&v)?.transpose(1, 2)?.reshape((n * len, h))?);
            }
            let ctx = if ctxs.len() == 1 {
                ctxs.swap_remove(0)
            } else {
                Tensor::cat(&ctxs, 0)?
            };
            x = layer
                .attn_norm
                .forward(&layer.attn_out.forward_residual(&ctx, &x)?)?;
            let inner = layer.intermediate.forward(&x, Some(self.act))?;
            x = layer
                .out_norm
                .forward(&layer.output.forward_residual(&inner, &x)?)?;
        }
        Ok(x)
    }
}

/// `erf(x)` for f32 by a rational approximation (odd degree-13 numerator over even degree-8
/// denominator, inputs clamped to ±4 where erf is ±1 in float32); agrees with a float64 erf
/// to about 1e-7 absolute (pinned by a test).
#[inline]
pub fn erf_f32(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = x2 * -2.726_142_3e-10 + 2.770_681_4e-8;
    p = x2 * p + -2.101_024e-6;
    p = x2 * p + -5.692_506_4e-5;
    p = x2 * p + -7.349_906_3e-4;
    p = x2 * p + -2.954_6e-3;
    p = x2 * p + -1.609_603_3e-2;
    p *= x;
    let mut q = x2 * -1.456_607_2e-5 + -2.133_740_6e-4;
    q = x2 * q + -1.682_827e-3;
    q = x2 * q + -7.373_329e-3;
    q = x2 * q + -1.426_474e-2;
    p / q
}

/// `act(a + b [+ c])` element-wise in parallel on rayon. `a` is `[rows, width]`; `b` is a
/// row vector broadcast over the rows (a bias) or `a`'s shape; `c` (the three-input form)
/// has `a`'s shape.
struct Fused {
    act: Option<HiddenAct>,
}

fn f32_input<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = s else {
        candle_core::bail!("fused add: expected f32 tensors")
    };
    let Some((start, end)) = l.contiguous_offsets() else {
        candle_core::bail!("fused add: expected contiguous tensors")
    };
    Ok(&data[start..end])
}

impl Fused {
    fn apply(&self, a: &[f32], la: &Layout, b: &[f32], c: Option<&[f32]>) -> Result<CpuStorage> {
        let n = a.len();
        let width = la.dims().last().copied().unwrap_or(1).max(1);
        let b_full = b.len() == n;
        if !(b_full || b.len() == width)
            || c.is_some_and(|c| c.len() != n)
            || !n.is_multiple_of(width)
        {
            candle_core::bail!("fused add: shapes do not line up")
        }
        // One monomorphised, branch-free loop per activation.
        let out = match self.act {
            None => fused_rows(a, b, c, width, |x| x),
            Some(HiddenAct::Gelu) => fused_rows(a, b, c, width, gelu),
            Some(HiddenAct::GeluApproximate) => fused_rows(a, b, c, width, gelu_tanh),
            Some(HiddenAct::Relu) => fused_rows(a, b, c, width, |x| x.max(0.0)),
        };
        Ok(CpuStorage::F32(out))
    }
}

/// `act(a + b [+ c])` over rows of `width`, in parallel chunks of rows.
fn fused_rows(
    a: &[f32],
    b: &[f32],
    c: Option<&[f32]>,
    width: usize,
    act: impl Fn(f32) -> f32 + Sync,
) -> Vec<f32> {
    let n = a.len();
    let b_full = b.len() == n;
    let rows_per = (16_384 / width).max(1);
    let mut out = vec![0.0f32; n];
    out.par_chunks_mut(rows_per * width)
        .enumerate()
        .for_each(|(chunk, o)| {
            let base = chunk * rows_per * width;
            for (r, orow) in o.chunks_mut(width).enumerate() {
                let at = base + r * width;
                let arow = &a[at..at + width];
                let brow = if b_full { &b[at..at + width] } else { b };
                match c {
                    Some(c) => {
                        let crow = &c[at..at + width];
                        for (((o, &x), &y), &z) in orow.iter_mut().zip(arow).zip(brow).zip(crow) {
                            *o = act(x + y + z);
                        }
                    }
                    None => {
                        for ((o, &x), &y) in orow.iter_mut().zip(arow).zip(brow) {
                            *o = act(x + y);
                        }
                    }
                }
            }
        });
    out
}

impl CustomOp2 for Fused {
    fn name(&self) -> &'static str {
        "vigil-fused-add"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = self.apply(f32_input(s1, l1)?, l1, f32_input(s2, l2)?, None)?;
        Ok((out, l1.shape().clone()))
    }
}

impl CustomOp3 for Fused {
    fn name(&self) -> &'static str {
        "vigil-fused-add3"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = self.apply(
            f32_input(s1, l1)?,
            l1,
            f32_input(s2, l2)?,
            Some(f32_input(s3, l3)?),
        )?;
        Ok((out, l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// float64 erf by its Maclaurin series (|x| < 3) or the continued fraction of erfc, as an
    /// independent reference.
    fn erf64(x: f64) -> f64 {
        if x.abs() < 3.0 {
            let mut term = x;
            let mut sum = x;
            for n in 1..200 {
                term *= -x * x / n as f64;
                sum += term / (2 * n + 1) as f64;
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            // erfc(x) = exp(-x²)/(x√π) · 1/(1 + 1/(2x²)/(1 + 2/(2x²)/(1 + ...)))
            let a = x.abs();
            let mut f = 0.0;
            for n in (1..60).rev() {
                f = (n as f64 / 2.0) / (a + f);
            }
            let erfc = (-a * a).exp() / std::f64::consts::PI.sqrt() / (a + f);
            (1.0 - erfc).copysign(x)
        }
    }

    #[test]
    fn fused_rows_broadcast_a_bias_or_add_a_full_tensor() {
        let a = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(
            fused_rows(&a, &[10.0, 20.0], None, 2, |x| x),
            vec![11.0, 22.0, 13.0, 24.0]
        );
        assert_eq!(
            fused_rows(&a, &a, Some(&[1.0; 4]), 2, |x| x.max(4.0)),
            vec![4.0, 5.0, 7.0, 9.0]
        );
    }

    #[test]
    fn fast_erf_agrees_with_float64_erf() {
        let mut worst = 0.0f64;
        for i in -60_000..=60_000 {
            let x = i as f64 / 10_000.0;
            let err = (f64::from(erf_f32(x as f32)) - erf64(x)).abs();
            worst = worst.max(err);
        }
        assert!(worst < 5e-7, "max abs error {worst}");
        assert_eq!(erf_f32(0.0), 0.0);
        assert!((erf_f32(10.0) - 1.0).abs() < 1e-6);
        assert!((erf_f32(-10.0) + 1.0).abs() < 1e-6);
    }
}
