//! Sentinel speed: `cargo run --release -p vigil-sentinel --example bench -- [scoring|encoding]`.
//!
//! scoring: an index of 1,000 positives and 5,000 negatives (random unit vectors, dim 384),
//! groups of 50 messages, explanations on: messages/s, GFLOP/s of the search, latency per
//! group (p50/p99); then one 50-message group against 100,000 negatives.
//! encoding: the conformance texts (set VIGIL_SHARED, VIGIL_MODEL) encoded repeatedly:
//! lines/s with the native MiniLM encoder.
//! e2e: 40 groups of 50 conformance lines, each encoded and scored (no embedding cache).
//! VIGIL_PRECISION=int16|int8 runs encoding and e2e in a fast mode.
//! matmul: the dense-layer multiply alone, f32 (candle) against the int16 and int8 kernels.

use std::time::Instant;

/// The allocator of the `vigil` binary, so these numbers match what the CLI runs.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use rand::{Rng, SeedableRng};
use vigil_sentinel::{IndexConfig, Matrix, ScoreParams, Scorer, SentinelIndex};

fn random_unit(rng: &mut impl Rng, rows: usize, dim: usize) -> Matrix {
    let mut data: Vec<f32> = (0..rows * dim).map(|_| rng.random::<f32>() - 0.5).collect();
    for r in data.chunks_mut(dim) {
        let n = r.iter().map(|x| x * x).sum::<f32>().sqrt();
        r.iter_mut().for_each(|x| *x /= n);
    }
    Matrix { data, rows, dim }
}

fn percentile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

fn scoring(neg_rows: usize, groups: usize) -> Result<(), Box<dyn std::error::Error>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let dim = 384;
    let pos = random_unit(&mut rng, 1000, dim);
    let neg = random_unit(&mut rng, neg_rows, dim);
    let index = SentinelIndex::new(pos, neg, None, None, IndexConfig::default())?;
    let scorer = Scorer::new(&index);
    let params = ScoreParams {
        explain: true,
        ..ScoreParams::default()
    };
    let texts: Vec<String> = (0..50).map(|i| format!("message {i}")).collect();
    let queries: Vec<Matrix> = (0..groups)
        .map(|_| random_unit(&mut rng, 50, dim))
        .collect();
    // warm up
    scorer.score_group(&texts, &queries[0], &params)?;
    let mut lat = Vec::with_capacity(groups);
    let t = Instant::now();
    for q in &queries {
        let g = Instant::now();
        let r = scorer.score_group(&texts, q, &params)?;
        std::hint::black_box(r);
        lat.push(g.elapsed().as_secs_f64() * 1e3);
    }
    let secs = t.elapsed().as_secs_f64();
    let msgs = (groups * 50) as f64;
    let flops = msgs * 2.0 * dim as f64 * (1000 + neg_rows) as f64;
    println!(
        "scoring: index 1000+{neg_rows}, {groups} groups of 50, explain on: {:.0} messages/s, {:.1} GFLOP/s, group latency p50 {:.2} ms p99 {:.2} ms",
        msgs / secs,
        flops / secs / 1e9,
        percentile(&mut lat.clone(), 0.5),
        percentile(&mut lat, 0.99)
    );
    Ok(())
}

/// The model directory and the distinct conformance texts (VIGIL_SHARED, VIGIL_MODEL).
#[cfg(feature = "encoder")]
fn conformance_pool() -> Result<(String, Vec<String>), Box<dyn std::error::Error>> {
    let shared = std::env::var("VIGIL_SHARED").unwrap_or_else(|_| "../shared".into());
    let model = std::env::var("VIGIL_MODEL").unwrap_or_else(|_| "models/all-MiniLM-L6-v2".into());
    let texts: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(format!(
        "{shared}/conformance/texts.json"
    ))?)?;
    let mut pool: Vec<String> = Vec::new();
    fn collect(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::String(s) => out.push(s.clone()),
            serde_json::Value::Array(a) => a.iter().for_each(|x| collect(x, out)),
            serde_json::Value::Object(o) => o.values().for_each(|x| collect(x, out)),
            _ => {}
        }
    }
    collect(&texts, &mut pool);
    Ok((model, pool))
}

#[cfg(feature = "encoder")]
fn encoding() -> Result<(), Box<dyn std::error::Error>> {
    use vigil_sentinel::{Encoder, MiniLmEncoder};
    let (model, pool) = conformance_pool()?;
    let lines: Vec<String> = pool.iter().cycle().take(2000).cloned().collect();
    let mut enc = MiniLmEncoder::load_with_precision(std::path::Path::new(&model), precision()?)?;
    if let Some(b) = std::env::var("VIGIL_BATCH")
        .ok()
        .and_then(|b| b.parse().ok())
    {
        enc.batch_size = b;
    }
    enc.encode(&lines[..64])?;
    let t = Instant::now();
    let m = enc.encode(&lines)?;
    let secs = t.elapsed().as_secs_f64();
    println!(
        "encoding ({}): {} lines ({} distinct) in {secs:.2} s: {:.0} lines/s",
        enc.precision(),
        m.rows,
        pool.len(),
        m.rows as f64 / secs
    );
    Ok(())
}

/// The encoder's precision from VIGIL_PRECISION (f32, int16, int8; default f32).
#[cfg(feature = "encoder")]
fn precision() -> Result<vigil_sentinel::Precision, Box<dyn std::error::Error>> {
    Ok(std::env::var("VIGIL_PRECISION")
        .unwrap_or_else(|_| "f32".into())
        .parse()?)
}

/// End to end as the reference's `calculate_rare_class_affinity` runs it: 40 groups of 50
/// real lines, each group encoded (no cache) and scored against an index of 1,000 + 5,000.
#[cfg(feature = "encoder")]
fn end_to_end() -> Result<(), Box<dyn std::error::Error>> {
    use vigil_sentinel::{Encoder, MiniLmEncoder};
    let (model, pool) = conformance_pool()?;
    let mut enc = MiniLmEncoder::load_with_precision(std::path::Path::new(&model), precision()?)?;
    if let Some(b) = std::env::var("VIGIL_BATCH")
        .ok()
        .and_then(|b| b.parse().ok())
    {
        enc.batch_size = b;
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    let pos = random_unit(&mut rng, 1000, enc.dim());
    let neg = random_unit(&mut rng, 5000, enc.dim());
    let index = SentinelIndex::new(pos, neg, None, None, IndexConfig::default())?;
    let scorer = Scorer::new(&index);
    let params = ScoreParams::default();
    let groups: Vec<Vec<String>> = pool
        .iter()
        .cycle()
        .skip(7)
        .take(2000)
        .cloned()
        .collect::<Vec<_>>()
        .chunks(50)
        .map(<[String]>::to_vec)
        .collect();
    enc.encode(&groups[0])?;
    let mut lat = Vec::new();
    let t = Instant::now();
    for g in &groups {
        let s = Instant::now();
        let emb = enc.encode(g)?;
        std::hint::black_box(scorer.score_group(g, &emb, &params)?);
        lat.push(s.elapsed().as_secs_f64() * 1e3);
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "end to end ({}): {} groups of 50 encoded and scored: {:.0} messages/s, group latency p50 {:.1} ms p99 {:.1} ms",
        enc.precision(),
        groups.len(),
        2000.0 / secs,
        percentile(&mut lat.clone(), 0.5),
        percentile(&mut lat, 0.99)
    );
    Ok(())
}

/// The dense layers' matrix multiply alone, MiniLM shapes (tokens x 384 -> 1536 and
/// tokens x 1536 -> 384): f32 through candle against the int16 and int8 kernels, in
/// GFLOP/s (2 x m x n x k per product), one thread and all threads.
#[cfg(feature = "encoder")]
fn matmul() -> Result<(), Box<dyn std::error::Error>> {
    use candle_core::{Device, Tensor};
    use vigil_sentinel::Precision;
    use vigil_sentinel::quant::QuantWeights;
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let m = 600;
    for (k, n) in [(384, 1536), (1536, 384)] {
        let x: Vec<f32> = (0..m * k).map(|_| rng.random::<f32>() - 0.5).collect();
        let w: Vec<f32> = (0..n * k)
            .map(|_| (rng.random::<f32>() - 0.5) * 0.1)
            .collect();
        let flops = 2.0 * (m * n * k) as f64;
        let reps = 50;
        let xt = Tensor::from_vec(x.clone(), (m, k), &Device::Cpu)?;
        let wt = Tensor::from_vec(w.clone(), (n, k), &Device::Cpu)?.t()?;
        let t = Instant::now();
        for _ in 0..reps {
            std::hint::black_box(xt.matmul(&wt)?);
        }
        let f32_rate = flops * reps as f64 / t.elapsed().as_secs_f64() / 1e9;
        let mut line = format!("matmul {m}x{k} -> {n}: f32 (candle) {f32_rate:.0} GFLOP/s");
        for p in [Precision::Int16, Precision::Int8] {
            let q = QuantWeights::new(&w, n, k, p, None).ok_or("quantise")?;
            let t = Instant::now();
            for _ in 0..reps {
                std::hint::black_box(q.matmul(&x, m)?);
            }
            let rate = flops * reps as f64 / t.elapsed().as_secs_f64() / 1e9;
            line.push_str(&format!(", {p} {rate:.0} GOP/s ({:.2}x)", rate / f32_rate));
        }
        println!("{line}");
    }
    Ok(())
}

/// Peak resident memory of this process (Linux `VmHWM`), in MB.
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // As the `vigil` binary does for `vigil sentinel`: mimalloc keeps freed pages
    // (`mi_option_purge_delay`, index 15 in mimalloc v3, set to -1 unless the environment
    // already sets MIMALLOC_PURGE_DELAY).
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: one integer allocator option; no memory is passed.
        #[allow(unsafe_code)]
        unsafe {
            if libmimalloc_sys::mi_option_get(15) == 1000 {
                libmimalloc_sys::mi_option_set(15, -1);
            }
        }
    }
    let what = std::env::args().nth(1).unwrap_or_else(|| "scoring".into());
    match what.as_str() {
        "scoring" => {
            scoring(5000, 400)?;
            scoring(100_000, 20)?;
        }
        #[cfg(feature = "encoder")]
        "encoding" => encoding()?,
        #[cfg(feature = "encoder")]
        "e2e" => end_to_end()?,
        #[cfg(feature = "encoder")]
        "matmul" => matmul()?,
        other => {
            return Err(
                format!("unknown benchmark {other} (scoring, encoding, e2e or matmul)").into(),
            );
        }
    }
    if let Some(mb) = peak_rss_mb() {
        println!("peak RSS: {mb:.0} MB");
    }
    Ok(())
}
