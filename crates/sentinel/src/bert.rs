//! BERT forward pass for sentence encoding (inference only), on candle tensors.
//!
//! Same arithmetic as the Hugging Face BERT the reference runs, arranged for short texts on a
//! CPU: every dense layer is one matrix multiply over all tokens of the batch (`[tokens,
//! hidden]`, not one per text), query/key/value are one fused projection, and the exact
//! (erf) GELU is a parallel element-wise op with a rational erf approximation accurate to
//! float32 rounding instead of a scalar libm call per activation.

use candle_core::{CpuStorage, CustomOp1, Layout, Module, Result, Shape, Tensor};
use candle_nn::{Embedding, LayerNorm, Linear, VarBuilder, embedding, layer_norm, linear};
use candle_transformers::models::bert::{Config, HiddenAct};
use rayon::prelude::*;

struct Layer {
    qkv: Linear,
    attn_out: Linear,
    attn_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
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

/// Query, key and value projections concatenated into one `hidden -> 3 * hidden` layer.
fn fused_qkv(vb: &VarBuilder, hidden: usize) -> Result<Linear> {
    let part = |name: &str| -> Result<(Tensor, Tensor)> {
        let vb = vb.pp(name);
        Ok((vb.get((hidden, hidden), "weight")?, vb.get(hidden, "bias")?))
    };
    let (qw, qb) = part("query")?;
    let (kw, kb) = part("key")?;
    let (vw, vbias) = part("value")?;
    Ok(Linear::new(
        Tensor::cat(&[qw, kw, vw], 0)?,
        Some(Tensor::cat(&[qb, kb, vbias], 0)?),
    ))
}

impl Bert {
    /// Load from safetensors weights named as in Hugging Face BERT (with or without a
    /// `bert.` prefix).
    pub fn load(vb: VarBuilder, config: &Config) -> Result<Self> {
        let vb = if vb.contains_tensor("bert.embeddings.word_embeddings.weight") {
            vb.pp("bert")
        } else {
            vb
        };
        let h = config.hidden_size;
        let e = vb.pp("embeddings");
        let eps = config.layer_norm_eps;
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let l = vb.pp(format!("encoder.layer.{i}"));
                Ok(Layer {
                    qkv: fused_qkv(&l.pp("attention.self"), h)?,
                    attn_out: linear(h, h, l.pp("attention.output.dense"))?,
                    attn_norm: layer_norm(h, eps, l.pp("attention.output.LayerNorm"))?,
                    intermediate: linear(h, config.intermediate_size, l.pp("intermediate.dense"))?,
                    output: linear(config.intermediate_size, h, l.pp("output.dense"))?,
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
        let x = ((self.word.forward(&flat(ids)?)? + self.token_type.forward(&flat(types)?)?)?
            + self.position.forward(&positions)?)?;
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
        let scale = (hd as f64).sqrt();
        for layer in &self.layers {
            let qkv = layer.qkv.forward(&x)?;
            let mut ctxs = Vec::with_capacity(runs.len());
            for &(start, n, len) in &runs {
                let part = qkv
                    .narrow(0, start, n * len)?
                    .reshape((n, len, 3, heads, hd))?
                    .permute((2, 0, 3, 1, 4))?;
                let q = part.get(0)?.contiguous()?;
                let k = part.get(1)?.contiguous()?;
                let v = part.get(2)?.contiguous()?;
                let probs = candle_nn::ops::softmax_last_dim(&(q.matmul(&k.t()?)? / scale)?)?;
                ctxs.push(probs.matmul(&v)?.transpose(1, 2)?.reshape((n * len, h))?);
            }
            let ctx = if ctxs.len() == 1 {
                ctxs.swap_remove(0)
            } else {
                Tensor::cat(&ctxs, 0)?
            };
            let attn = layer.attn_out.forward(&ctx)?;
            x = layer.attn_norm.forward(&(attn + &x)?)?;
            let inner = layer.intermediate.forward(&x)?;
            let inner = match self.act {
                HiddenAct::Gelu => inner.apply_op1_no_bwd(&GeluErf)?,
                HiddenAct::GeluApproximate => inner.gelu()?,
                HiddenAct::Relu => inner.relu()?,
            };
            let out = layer.output.forward(&inner)?;
            x = layer.out_norm.forward(&(out + &x)?)?;
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

/// The exact GELU, `x/2 * (1 + erf(x/√2))`, element-wise in parallel.
struct GeluErf;

impl CustomOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "vigil-gelu-erf"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("gelu: expected f32 activations")
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("gelu: expected contiguous activations")
        };
        let src = &data[start..end];
        let mut out = vec![0.0f32; src.len()];
        out.par_chunks_mut(8192)
            .zip(src.par_chunks(8192))
            .for_each(|(o, i)| {
                for (o, &x) in o.iter_mut().zip(i) {
                    *o = 0.5 * x * (1.0 + erf_f32(x * std::f32::consts::FRAC_1_SQRT_2));
                }
            });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
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
