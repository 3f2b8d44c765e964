//! The fused decode projections of the CUDA backend (`qkv_projection`, `rms_norm_swiglu`,
//! `rms_norm_matmul_many`, `matmul_add`: the GEMV with the norm, RoPE, SiLU·mul or residual add
//! folded in) against the CPU, whose ops are the plain compositions those fusions stand for.
//! Random inputs, outputs poisoned first; every GEMV variant (1, 2, 4 and 8 rows of x on the CUDA
//! cores; 2, 5 and 8 rows of f16 weights with k % 32 == 0 on the tensor cores) and shapes that
//! fall back to the composition (9 rows, k not a multiple of 8). Without a driver or GPU
//! each test prints `skipped: no CUDA device (<reason>)` to stderr and passes.
//!
//! Error bound: both sides read the same stored weights and compute in f32, in a different order
//! (the GPU scales its dot products by 1/rms at the end instead of normalising x first), so the
//! `cuda_vs_cpu` bounds hold: `‖cuda − cpu‖ / ‖cpu‖ ≤ 1e-5` per output row, 3e-5 for k > 1024.
#![cfg(feature = "cuda")]

mod common;

use common::*;
use quest_kernels::{Backend, CpuBackend, CudaBackend, Half, KernelError, RopeInput, bf16, f16};
use rand::Rng;

fn tol(k: usize) -> f64 {
    if k > 1024 { 3e-5 } else { 1e-5 }
}

/// (rows of x, k): every GEMV variant (f16 weights: 2, 5 and 8 rows with k % 32 == 0 on the
/// tensor cores, 2 and 8 rows with k = 72 on the CUDA cores), a k of many chunks, two fallbacks.
const SHAPES: &[(usize, usize)] = &[
    (1, 576),
    (2, 64),
    (3, 256),
    (4, 1024),
    (5, 128),
    (8, 4096),
    (8, 72),
    (2, 72),
    (9, 64),
    (2, 60),
];

fn projections<T: Half>(g: &CudaBackend, seed: u64) {
    let c = &CpuBackend;
    let mut r = rng(seed);
    for &(n, k) in SHAPES {
        let eps = 1e-5;
        // Now and then values far beyond f16's range once split (|x| ~ 1e5), which the
        // tensor-core path must carry (it scales x before splitting it into f16 hi + lo).
        let big = if r.random_range(0..3) == 0 { 5e4 } else { 2.0 };
        let x = uniform(&mut r, n * k, -big, big);
        let norm = uniform_half::<T>(&mut r, k);
        let (xg, ng) = (up(g, &x), up(g, &norm));

        // q/k/v with RoPE: head_dim 16..128, q and k of different head counts.
        // head_dim 8: a tensor-core block's 8 row pairs span two heads.
        let hd = [8usize, 16, 64, 128][r.random_range(0..4)];
        let (mq, mk, mv) = (
            hd * r.random_range(1..5),
            hd * r.random_range(1..3),
            hd * 2 + 3,
        );
        let ws: Vec<Vec<T>> = [mq, mk, mv]
            .iter()
            .map(|&m| uniform_half::<T>(&mut r, m * k))
            .collect();
        let wg: Vec<_> = ws.iter().map(|w| up(g, w)).collect();
        let positions: Vec<i32> = (0..n).map(|_| r.random_range(0..40_000)).collect();
        let inv_freq: Vec<f32> = (0..hd / 2)
            .map(|i| 10000f32.powf(-2.0 * i as f32 / hd as f32))
            .collect();
        let mut want: Vec<Vec<f32>> = [mq, mk, mv].iter().map(|&m| poison(n * m)).collect();
        {
            let [q, kk, v] = &mut want[..] else {
                unreachable!()
            };
            let rope = RopeInput {
                positions: &positions,
                inv_freq: &inv_freq,
                head_dim: hd,
            };
            c.qkv_projection(
                &x,
                &norm,
                eps,
                [&ws[0], &ws[1], &ws[2]],
                n,
                k,
                [q, kk, v],
                &rope,
            )
            .unwrap();
        }
        let mut got: Vec<_> = [mq, mk, mv]
            .iter()
            .map(|&m| up(g, &poison(n * m)))
            .collect();
        {
            let [q, kk, v] = &mut got[..] else {
                unreachable!()
            };
            let (pg, fg) = (up(g, &positions), up(g, &inv_freq));
            let rope = RopeInput {
                positions: &pg,
                inv_freq: &fg,
                head_dim: hd,
            };
            g.qkv_projection(
                &xg,
                &ng,
                eps,
                [&wg[0], &wg[1], &wg[2]],
                n,
                k,
                [q, kk, v],
                &rope,
            )
            .unwrap();
        }
        for (i, (name, m)) in [("q", mq), ("k", mk), ("v", mv)].into_iter().enumerate() {
            let what = format!("qkv_projection {name} n={n} k={k} head_dim={hd}");
            check_close(&what, &down(g, &got[i]), &want[i], m, tol(k));
        }

        // gate/up with SiLU·mul, m not a multiple of any block's rows.
        let m = 8 * r.random_range(1..40) + 3;
        let (wgate, wup) = (
            uniform_half::<T>(&mut r, m * k),
            uniform_half::<T>(&mut r, m * k),
        );
        let mut want = poison(n * m);
        c.rms_norm_swiglu(&x, &norm, eps, &wgate, &wup, n, k, &mut want)
            .unwrap();
        let mut got = up(g, &poison(n * m));
        g.rms_norm_swiglu(&xg, &ng, eps, &up(g, &wgate), &up(g, &wup), n, k, &mut got)
            .unwrap();
        check_close(
            &format!("rms_norm_swiglu n={n} k={k} m={m}"),
            &down(g, &got),
            &want,
            m,
            tol(k),
        );

        // The final norm and the lm_head, and several matrices in one launch.
        let ms = [m, 5, 17];
        let ws: Vec<Vec<T>> = ms
            .iter()
            .map(|&m| uniform_half::<T>(&mut r, m * k))
            .collect();
        let wg: Vec<_> = ws.iter().map(|w| up(g, w)).collect();
        let mut want: Vec<Vec<f32>> = ms.iter().map(|&m| poison(n * m)).collect();
        let mut got: Vec<_> = ms.iter().map(|&m| up(g, &poison(n * m))).collect();
        {
            let wr: Vec<&Vec<T>> = ws.iter().collect();
            let mut orefs: Vec<_> = want.iter_mut().collect();
            c.rms_norm_matmul_many(&x, &norm, eps, &wr, n, k, &mut orefs)
                .unwrap();
            let wr: Vec<_> = wg.iter().collect();
            let mut orefs: Vec<_> = got.iter_mut().collect();
            g.rms_norm_matmul_many(&xg, &ng, eps, &wr, n, k, &mut orefs)
                .unwrap();
        }
        for (i, &m) in ms.iter().enumerate() {
            let what = format!("rms_norm_matmul_many n={n} k={k} matrix {i}");
            check_close(&what, &down(g, &got[i]), &want[i], m, tol(k));
        }

        // The output projection with the residual add: out starts random, not zero.
        let w = uniform_half::<T>(&mut r, m * k);
        let start = uniform(&mut r, n * m, -4.0, 4.0);
        let mut want = start.clone();
        c.matmul_add(&x, &w, n, k, m, &mut want).unwrap();
        let mut got = up(g, &start);
        g.matmul_add(&xg, &up(g, &w), n, k, m, &mut got).unwrap();
        check_close(
            &format!("matmul_add n={n} k={k} m={m}"),
            &down(g, &got),
            &want,
            m,
            tol(k),
        );
    }
}

#[test]
fn fused_projections_match_cpu() {
    let Some(g) = cuda() else { return };
    for seed in 0..3 {
        projections::<f16>(g, seed);
        projections::<bf16>(g, seed + 10);
        projections::<f32>(g, seed + 20);
    }
}

#[test]
fn fused_projections_refuse_bad_shapes_like_the_cpu() {
    let Some(g) = cuda() else { return };
    let c = &CpuBackend;
    let mut r = rng(7);
    let (n, k, m) = (2usize, 64usize, 24usize);
    let x = uniform(&mut r, n * k, -1.0, 1.0);
    let short_norm = uniform_half::<f16>(&mut r, k / 2); // divides the row: not k
    let w = uniform_half::<f16>(&mut r, m * k);
    let w_short = uniform_half::<f16>(&mut r, (m - 1) * k);
    let mut out = poison(n * m);
    let mut out_g = up(g, &out);
    let cpu = c.rms_norm_matmul_many(&x, &short_norm, 1e-5, &[&w], n, k, &mut [&mut out]);
    let gpu = g.rms_norm_matmul_many(
        &up(g, &x),
        &up(g, &short_norm),
        1e-5,
        &[&up(g, &w)],
        n,
        k,
        &mut [&mut out_g],
    );
    assert!(matches!(cpu, Err(KernelError::Shape { .. })), "{cpu:?}");
    assert_eq!(format!("{cpu:?}"), format!("{gpu:?}"));
    let norm = uniform_half::<f16>(&mut r, k);
    let cpu = c.rms_norm_swiglu(&x, &norm, 1e-5, &w, &w_short, n, k, &mut out);
    let gpu = g.rms_norm_swiglu(
        &up(g, &x),
        &up(g, &norm),
        1e-5,
        &up(g, &w),
        &up(g, &w_short),
        n,
        k,
        &mut out_g,
    );
    assert!(matches!(cpu, Err(KernelError::Shape { .. })), "{cpu:?}");
    assert_eq!(format!("{cpu:?}"), format!("{gpu:?}"));
    // Fast-path shapes (f16, k % 32 == 0, whole heads) with one thing wrong: the GPU checks
    // before its fused launch, the CPU before its composition; same error.
    let mut short_out = up(g, &poison(n * m - 1));
    let cpu = c.rms_norm_swiglu(&x, &norm, 1e-5, &w, &w, n, k, &mut poison(n * m - 1));
    let gpu = g.rms_norm_swiglu(
        &up(g, &x),
        &up(g, &norm),
        1e-5,
        &up(g, &w),
        &up(g, &w),
        n,
        k,
        &mut short_out,
    );
    assert!(cpu.is_err(), "a short output must be refused");
    assert_eq!(format!("{cpu:?}"), format!("{gpu:?}"));
    let hd = 8; // w: 24 rows = 3 heads of 8
    let inv_freq: Vec<f32> = (0..hd / 2).map(|i| 1.0 / (i as f32 + 1.0)).collect();
    let wv = uniform_half::<f16>(&mut r, 16 * k);
    for (what, positions, head_dim) in [
        ("one position for two rows of x", vec![3i32], hd),
        ("a negative position", vec![3i32, -1], hd),
        ("an odd head_dim", vec![3i32, 4], 7),
    ] {
        let mut cpu_out = [poison(n * m), poison(n * m), poison(n * 16)];
        let [q, kk, v] = &mut cpu_out;
        let rope = RopeInput {
            positions: &positions,
            inv_freq: &inv_freq,
            head_dim,
        };
        let cpu = c.qkv_projection(&x, &norm, 1e-5, [&w, &w, &wv], n, k, [q, kk, v], &rope);
        let (pg, fg) = (up(g, &positions), up(g, &inv_freq));
        let rope = RopeInput {
            positions: &pg,
            inv_freq: &fg,
            head_dim,
        };
        let mut gpu_out = [
            up(g, &poison(n * m)),
            up(g, &poison(n * m)),
            up(g, &poison(n * 16)),
        ];
        let [q, kk, v] = &mut gpu_out;
        let (xg, ng, wg, wvg) = (up(g, &x), up(g, &norm), up(g, &w), up(g, &wv));
        let gpu = g.qkv_projection(&xg, &ng, 1e-5, [&wg, &wg, &wvg], n, k, [q, kk, v], &rope);
        assert!(cpu.is_err(), "qkv_projection with {what} must be refused");
        assert_eq!(format!("{cpu:?}"), format!("{gpu:?}"), "{what}");
    }
    let mut small = up(g, &poison(n * m - 1));
    let gpu = g.matmul_add(&up(g, &x), &up(g, &w), n, k, m, &mut small);
    let cpu = c.matmul_add(&x, &w, n, k, m, &mut poison(n * m - 1));
    assert!(
        cpu.is_err() && format!("{cpu:?}") == format!("{gpu:?}"),
        "{cpu:?} / {gpu:?}"
    );
}
