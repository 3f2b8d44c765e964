//! `quest bench kernels`: the kernel benchmark on the CUDA backend: paged decode (dense), Quest's estimate, top-k and sparse
//! decode, and the whole Quest step, at head_dim 128, page 16, 32 query heads with 32 and 8 KV
//! heads, batch 1, contexts 4K–128K, budgets 256–4096; plus the estimate over 8-bit bounds
//! (`estimate_int8`, every context) and the Quest step with it (`quest_step_int8`, 32K/2048 and
//! 128K/4096), its bounds encoded by `update_bounds_int8` from the benchmark's random keys; the
//! adaptive budget's top-k (`topk_mass`, p = 0.9, every context and budget); and
//! the decode GEMVs of the 7B/8B layers (rows `gemv_*`: the `context` column holds the weight
//! rows m, `budget` the columns k).
//!
//! `quest bench kernels [--json out.json]`
//!
//! Method: CUDA events around each run; before each run a 512 MiB read (an argmax over it) keeps
//! the GPU busy while the host queues the op (so host-side launch time is not measured) and
//! evicts L2, leaving it full of clean lines as a decode step's weight reads do (a memset would
//! leave 50 MB of dirty lines whose write-back the next op pays); every input
//! (KV pool, bounds, tables) exists in 3 copies, rotated between runs; 5 warm-up runs, then the
//! median of 25. Bandwidth = the bytes the op must move (each input read once, outputs written
//! once) / time; "% copy" compares with a device-to-device copy measured in the same run.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Args;

use quest_kernels::{
    AttentionShape, Backend, BoundsFormat, CudaBackend, CudaBuf, DevicePageTable, PageTable,
    PagedLayout, SelectOptions, TableRows, f16,
};

const COPIES: usize = 3;
const WARMUP: usize = 5;
const RUNS: usize = 25;
const HQ: usize = 32;
const D: usize = 128;
const PS: usize = 16;
/// The L2 flush reads 512 MiB of f32 as rows of this many values.
const FLUSH_ROW: usize = 32768;
/// The softmax-mass threshold of the `topk_mass` rows (the adaptive budget's kernel).
const MASS: f32 = 0.9;
/// (context, budget) of the Quest-step rows with 8-bit bounds.
const INT8_STEPS: [(usize, usize); 2] = [(32768, 2048), (131072, 4096)];

type Res<T> = anyhow::Result<T>;

struct Timer<'a> {
    be: &'a CudaBackend,
    flush: CudaBuf<f32>,
    flush_out: CudaBuf<u32>,
}

impl Timer<'_> {
    /// Median device time in microseconds of `f`, run WARMUP + RUNS times with copy index i % 3.
    fn time(&mut self, mut f: impl FnMut(usize) -> Res<()>) -> Res<f64> {
        let ctx = self.be.context();
        let mut samples = Vec::new();
        for i in 0..WARMUP + RUNS {
            self.be
                .argmax(&self.flush, FLUSH_ROW, &mut self.flush_out)?;
            let timing = Some(quest_kernels::cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
            let (a, b) = (ctx.new_event(timing)?, ctx.new_event(timing)?);
            a.record(self.be.stream())?;
            f(i % COPIES)?;
            b.record(self.be.stream())?;
            if i >= WARMUP {
                samples.push((a, b));
            }
        }
        self.be.synchronize()?;
        let mut t: Vec<f64> = samples
            .iter()
            .map(|(a, b)| a.elapsed_ms(b).map(|ms| ms as f64 * 1000.0))
            .collect::<Result<_, _>>()?;
        t.sort_by(f64::total_cmp);
        Ok(t[t.len() / 2])
    }
}

/// Fills a device buffer with non-zero pseudo-random f16 values (a 16 MiB random block repeated).
fn random_f16(be: &CudaBackend, len: usize, seed: u64) -> Res<CudaBuf<f16>> {
    let mut buf = be.zeros::<f16>(len)?;
    let mut x = seed | 1;
    let block: Vec<f16> = (0..(8usize << 20).min(len))
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            f16::from_f32(((x >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0 + 1e-3)
        })
        .collect();
    let mut off = 0;
    while off < len {
        let n = block.len().min(len - off);
        be.write(&mut buf, off, &block[..n])?;
        off += n;
    }
    Ok(buf)
}

fn random_f32(be: &CudaBackend, len: usize) -> Res<CudaBuf<f32>> {
    let mut buf = be.zeros::<f32>(len)?;
    be.fill_random(&mut buf, 0xf1u64, 1.0)?;
    Ok(buf)
}

struct Row {
    op: String,
    hkv: usize,
    context: usize,
    budget: usize,
    us: f64,
    bytes: f64,
}

#[derive(Args, Debug)]
pub struct KernelArgs {
    /// Where to write the rows as JSON.
    #[arg(long, default_value = "bench_kernels.json")]
    pub json: PathBuf,
    /// Context lengths of the attention rows.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "4096,8192,16384,32768,65536,131072"
    )]
    pub contexts: Vec<usize>,
    /// KV head counts of the attention rows (32 query heads).
    #[arg(long, value_delimiter = ',', default_value = "32,8")]
    pub kv_heads: Vec<usize>,
    /// Token budgets of the selection rows (multiples of the page size 16).
    #[arg(long, value_delimiter = ',', default_value = "256,512,1024,2048,4096")]
    pub budgets: Vec<usize>,
    /// Leave out the GEMV rows.
    #[arg(long)]
    pub no_gemv: bool,
}

pub fn run(args: &KernelArgs) -> Res<()> {
    let out_path = args.json.display().to_string();
    let be = CudaBackend::new(0).context("quest bench kernels needs a CUDA device")?;
    let flush = random_f32(&be, 128 << 20)?;
    let flush_out = be.zeros::<u32>((128 << 20) / FLUSH_ROW)?;
    let mut timer = Timer {
        be: &be,
        flush,
        flush_out,
    };

    // Copy bandwidth: 1 GiB device-to-device, bytes read + written.
    let src = be.stream().alloc_zeros::<u8>(1 << 30)?;
    let mut dst = be.stream().alloc_zeros::<u8>(1 << 30)?;
    let copy_us = timer.time(|_| Ok(be.stream().memcpy_dtod(&src, &mut dst)?))?;
    let copy_gbs = 2.0 * (1u64 << 30) as f64 / copy_us / 1e3;
    drop((src, dst));
    println!("device: {}", be.name());
    println!(
        "copy bandwidth: {copy_gbs:.0} GB/s (1 GiB d2d, read + write, median {copy_us:.1} us)"
    );

    let contexts = &args.contexts;
    if contexts.is_empty() || contexts.iter().any(|&c| c < PS || c % PS != 0) {
        anyhow::bail!("--contexts must be multiples of the page size {PS}");
    }
    if args.kv_heads.iter().any(|&h| h == 0 || HQ % h != 0) {
        anyhow::bail!("--kv-heads must divide the {HQ} query heads");
    }
    let budgets = &args.budgets;
    if budgets.iter().any(|&b| b < PS || b % PS != 0) {
        anyhow::bail!("--budgets must be multiples of the page size {PS}");
    }
    let mut rows = Vec::new();
    for &hkv in &args.kv_heads {
        let max_pages = contexts.iter().max().copied().unwrap_or(PS) / PS;
        let layout = PagedLayout {
            num_pages: COPIES * max_pages,
            page_size: PS,
            num_kv_heads: hkv,
            head_dim: D,
        };
        let shape = AttentionShape {
            num_qo_heads: HQ,
            layout,
            sm_scale: 1.0 / (D as f32).sqrt(),
        };
        let kv = random_f16(&be, layout.kv_len(), 1 + hkv as u64)?;
        let bounds = random_f16(&be, layout.bounds_len(), 7 + hkv as u64)?;
        // 8-bit bounds of every page of the pool, encoded from its (random) keys.
        let mut codes = be.zeros::<u8>(layout.bounds_len())?;
        let mut params = be.zeros::<f32>(layout.int8_params_len())?;
        let all: Vec<i32> = (0..layout.num_pages as i32).collect();
        be.update_bounds_int8(
            &kv,
            &mut codes,
            &mut params,
            &layout,
            &be.upload(&all)?,
            &be.upload(&vec![PS as i32; all.len()])?,
        )?;
        let qs: Vec<CudaBuf<f32>> = (0..COPIES)
            .map(|c| be.upload(&vec![0.01 * (c + 1) as f32; HQ * D]))
            .collect::<Result<_, _>>()?;
        let mut out = be.zeros::<f32>(HQ * D)?;
        let (kv_tok_bytes, bound_page_bytes) = ((2 * hkv * D * 2) as f64, (2 * hkv * D * 2) as f64);
        let int8_page_bytes = (hkv * BoundsFormat::Int8.bytes_per_page_head(D, 2)) as f64;
        for &ctx in contexts {
            let n = ctx / PS;
            let tables: Vec<DevicePageTable<CudaBackend>> = (0..COPIES)
                .map(|c| {
                    let mut t = PageTable::new();
                    let pages: Vec<i32> = (0..n).map(|p| (c * max_pages + p) as i32).collect();
                    t.push_row(&pages, PS as i32);
                    DevicePageTable::upload(&be, &t, &layout)
                })
                .collect::<Result<_, _>>()?;
            let q_bytes = (2 * HQ * D * 4) as f64; // q read + out written
            let us = timer.time(|c| {
                Ok(be.decode_attention(
                    &qs[c],
                    &kv,
                    &shape,
                    &tables[c],
                    TableRows::PerSequence,
                    &mut out,
                )?)
            })?;
            rows.push(Row {
                op: "decode_dense".into(),
                hkv,
                context: ctx,
                budget: 0,
                us,
                bytes: ctx as f64 * kv_tok_bytes + q_bytes,
            });
            let mut scores: Vec<CudaBuf<f32>> = (0..COPIES)
                .map(|_| be.zeros::<f32>(HQ * n))
                .collect::<Result<_, _>>()?;
            let us = timer.time(|c| {
                Ok(be.estimate_pages(&qs[c], &bounds, &shape, &tables[c], &mut scores[c])?)
            })?;
            rows.push(Row {
                op: "estimate".into(),
                hkv,
                context: ctx,
                budget: 0,
                us,
                bytes: n as f64 * bound_page_bytes + (HQ * n * 4) as f64,
            });
            let us = timer.time(|c| {
                Ok(be.estimate_pages_int8(
                    &qs[c],
                    &codes,
                    &params,
                    &shape,
                    &tables[c],
                    &mut scores[c],
                )?)
            })?;
            rows.push(Row {
                op: "estimate_int8".into(),
                hkv,
                context: ctx,
                budget: 0,
                us,
                bytes: n as f64 * int8_page_bytes + (HQ * n * 4) as f64,
            });
            for &budget in budgets {
                if budget >= ctx {
                    continue;
                }
                let bp = budget / PS;
                // One selection output table per copy of the inputs.
                let new_selections = || -> Res<Vec<DevicePageTable<CudaBackend>>> {
                    Ok((0..COPIES)
                        .map(|c| {
                            DevicePageTable::for_selection(&be, &tables[c].indptr_host, hkv, bp)
                        })
                        .collect::<Result<_, _>>()?)
                };
                let mut sels = new_selections()?;
                let us = timer.time(|c| {
                    Ok(be.select_top_pages(
                        &scores[c],
                        &shape,
                        &tables[c],
                        SelectOptions::top_k(bp, TableRows::PerKvHead),
                        &mut sels[c],
                        None,
                    )?)
                })?;
                rows.push(Row {
                    op: "topk".into(),
                    hkv,
                    context: ctx,
                    budget,
                    us,
                    bytes: (HQ * n * 4) as f64,
                });
                // The adaptive budget's kernel, for budgets it supports (at most 1025 pages: it
                // sorts a row's winners in shared memory).
                if bp <= 1025 {
                    // Own output tables: its trimmed rows must not feed the sparse decode below.
                    let mut sels_mass = new_selections()?;
                    let us = timer.time(|c| {
                        Ok(be.select_top_pages(
                            &scores[c],
                            &shape,
                            &tables[c],
                            SelectOptions::top_k(bp, TableRows::PerKvHead).with_mass(Some(MASS)),
                            &mut sels_mass[c],
                            None,
                        )?)
                    })?;
                    rows.push(Row {
                        op: "topk_mass".into(),
                        hkv,
                        context: ctx,
                        budget,
                        us,
                        bytes: (HQ * n * 4) as f64,
                    });
                }
                let sparse_bytes = (budget * hkv * D * 2 * 2) as f64 + q_bytes;
                let us = timer.time(|c| {
                    Ok(be.decode_attention(
                        &qs[c],
                        &kv,
                        &shape,
                        &sels[c],
                        TableRows::PerKvHead,
                        &mut out,
                    )?)
                })?;
                rows.push(Row {
                    op: "decode_sparse".into(),
                    hkv,
                    context: ctx,
                    budget,
                    us,
                    bytes: sparse_bytes,
                });
                let us = timer.time(|c| {
                    be.estimate_pages(&qs[c], &bounds, &shape, &tables[c], &mut scores[c])?;
                    be.select_top_pages(
                        &scores[c],
                        &shape,
                        &tables[c],
                        SelectOptions::top_k(bp, TableRows::PerKvHead),
                        &mut sels[c],
                        None,
                    )?;
                    be.decode_attention(
                        &qs[c],
                        &kv,
                        &shape,
                        &sels[c],
                        TableRows::PerKvHead,
                        &mut out,
                    )?;
                    Ok(())
                })?;
                let step_bytes = n as f64 * bound_page_bytes + sparse_bytes;
                rows.push(Row {
                    op: "quest_step".into(),
                    hkv,
                    context: ctx,
                    budget,
                    us,
                    bytes: step_bytes,
                });
                if !INT8_STEPS.contains(&(ctx, budget)) {
                    continue;
                }
                let us = timer.time(|c| {
                    be.estimate_pages_int8(
                        &qs[c],
                        &codes,
                        &params,
                        &shape,
                        &tables[c],
                        &mut scores[c],
                    )?;
                    be.select_top_pages(
                        &scores[c],
                        &shape,
                        &tables[c],
                        SelectOptions::top_k(bp, TableRows::PerKvHead),
                        &mut sels[c],
                        None,
                    )?;
                    be.decode_attention(
                        &qs[c],
                        &kv,
                        &shape,
                        &sels[c],
                        TableRows::PerKvHead,
                        &mut out,
                    )?;
                    Ok(())
                })?;
                rows.push(Row {
                    op: "quest_step_int8".into(),
                    hkv,
                    context: ctx,
                    budget,
                    us,
                    bytes: n as f64 * int8_page_bytes + sparse_bytes,
                });
            }
        }
    }

    // Decode GEMVs of the Llama-2-7B and Llama-3-8B layers (f16 weights, x of 1 and 8 rows),
    // the matrices sharing x launched together as the model does (`matmul_many`).
    let gemvs: [(&str, &[usize], usize); 8] = [
        ("7b_qkv", &[4096, 4096, 4096], 4096),
        ("7b_o", &[4096], 4096),
        ("7b_gate_up", &[11008, 11008], 4096),
        ("7b_down", &[4096], 11008),
        ("8b_qkv", &[4096, 1024, 1024], 4096),
        ("8b_gate_up", &[14336, 14336], 4096),
        ("8b_down", &[4096], 14336),
        ("8b_lm_head", &[128256], 4096),
    ];
    for (name, ms, k) in gemvs.into_iter().filter(|_| !args.no_gemv) {
        let ws: Vec<Vec<CudaBuf<f16>>> = (0..COPIES)
            .map(|c| {
                ms.iter()
                    .map(|&m| {
                        let mut w = be.zeros::<f16>(m * k)?;
                        be.fill_random(&mut w, 100 + c as u64, 0.02)?;
                        Ok(w)
                    })
                    .collect::<Res<Vec<_>>>()
            })
            .collect::<Res<_>>()?;
        for n in [1usize, 8] {
            let x = random_f32(&be, n * k)?;
            let mut outs: Vec<CudaBuf<f32>> = ms
                .iter()
                .map(|&m| be.zeros::<f32>(n * m))
                .collect::<Result<_, _>>()?;
            let us = timer.time(|c| {
                let wrefs: Vec<&CudaBuf<f16>> = ws[c].iter().collect();
                let mut orefs: Vec<&mut CudaBuf<f32>> = outs.iter_mut().collect();
                Ok(be.matmul_many(&x, &wrefs, n, k, &mut orefs)?)
            })?;
            let m_total: usize = ms.iter().sum();
            rows.push(Row {
                op: format!("gemv_{name}_n{n}"),
                hkv: 0,
                context: m_total,
                budget: k,
                us,
                bytes: (m_total * k * 2 + n * k * 4 + n * m_total * 4) as f64,
            });
        }
    }

    println!(
        "\n{:<20} {:>4} {:>4} {:>7} {:>6} {:>10} {:>8} {:>7}",
        "op", "hq", "hkv", "context", "budget", "time_us", "GB/s", "%copy"
    );
    let mut json = String::from("{\n");
    let date = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    json += &format!(
        "  \"device\": \"{}\",\n  \"unix_time\": {date},\n  \"copy_gbs\": {copy_gbs:.1},\n  \"rows\": [\n",
        be.name()
    );
    for (i, r) in rows.iter().enumerate() {
        let gbs = r.bytes / r.us / 1e3;
        println!(
            "{:<20} {:>4} {:>4} {:>7} {:>6} {:>10.1} {:>8.0} {:>6.1}%",
            r.op,
            HQ,
            r.hkv,
            r.context,
            r.budget,
            r.us,
            gbs,
            100.0 * gbs / copy_gbs
        );
        json += &format!(
            "    {{\"op\": \"{}\", \"num_qo_heads\": {HQ}, \"num_kv_heads\": {}, \"context\": {}, \"budget\": {}, \"time_us\": {:.2}, \"bytes\": {:.0}, \"gbs\": {:.1}, \"pct_copy\": {:.1}}}{}\n",
            r.op,
            r.hkv,
            r.context,
            r.budget,
            r.us,
            r.bytes,
            gbs,
            100.0 * gbs / copy_gbs,
            if i + 1 == rows.len() { "" } else { "," }
        );
    }
    json += "  ]\n}\n";
    std::fs::write(&out_path, json)?;
    println!("\nwrote {out_path}");
    Ok(())
}
