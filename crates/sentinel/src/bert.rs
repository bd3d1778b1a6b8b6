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

    /// Hidden states `[batch, seq, hidden]` for token ids, token types and a 0/1 attention
    /// mask (all `[batch, seq]`, u32).
    pub fn forward(&self, ids: &Tensor, types: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (b, s) = ids.dims2()?;
        let (h, heads, hd) = (self.hidden, self.heads, self.head_dim);
        let positions = Tensor::arange(0u32, s as u32, ids.device())?;
        let x = (self.word.forward(&ids.flatten_all()?)?
            + self.token_type.forward(&types.flatten_all()?)?)?
        .reshape((b, s, h))?
        .broadcast_add(&self.position.forward(&positions)?)?
        .reshape((b * s, h))?;
        let mut x = self.norm.forward(&x)?;
        // Additive mask: 0 for real tokens, the most negative float for padding.
        let mask = mask.to_dtype(candle_core::DType::F32)?;
        let mask = ((mask.ones_like()? - &mask)? * f64::from(f32::MIN))?.reshape((b, 1, 1, s))?;
        let scale = (hd as f64).sqrt();
        for layer in &self.layers {
            let qkv = layer
                .qkv
                .forward(&x)?
                .reshape((b, s, 3, heads, hd))?
                .permute((2, 0, 3, 1, 4))?;
            let q = qkv.get(0)?.contiguous()?;
            let k = qkv.get(1)?.contiguous()?;
            let v = qkv.get(2)?.contiguous()?;
            let scores = (q.matmul(&k.t()?)? / scale)?.broadcast_add(&mask)?;
            let probs = candle_nn::ops::softmax_last_dim(&scores)?;
            let ctx = probs.matmul(&v)?.transpose(1, 2)?.reshape((b * s, h))?;
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
        x.reshape((b, s, h))
    }
}

/// `erf(x)` for f32 by a rational approximation (odd degree-13 numerator over even degree-8
/// denominator, inputs clamped to ±4 where erf is ±1 in float32); agrees with a float64 erf
/// to about 1e-7 absolute (pinned by a test).
#[inline]
pub fn erf_f32(x: f32) -> f32 {
    let x = if x > 4.0 {
        4.0
    } else if x < -4.0 {
        -4.0
    } else {
        x
    };
    let x2 = x * x;
    let mut p = x2 * -2.726_142_3e-10 + 2.770_681_4e-8;
    p = x2 * p + -2.101_024e-6;
    p = x2 * p + -5.692_506_4e-5;
    p = x2 * p + -7.349_906_3e-4;
    p = x2 * p + -2.954_599_8e-3;
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
