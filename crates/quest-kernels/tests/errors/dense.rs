//! Bad input to the dense ops (embedding, rms_norm, rope, matmul, matmul_many, silu_mul,
//! add_assign, argmax, sample, write): each call is refused with an error that names the op and
//! the problem, and an in-place op leaves its buffer unchanged.

use super::*;

pub(super) fn dense_errors<B: Backend>(b: &B) {
    let f = |v: &[f32]| up(b, v);
    let table = up(b, &[f16::from_f32(0.5); 4 * 3]); // vocab 4, hidden 3
    let mut out3 = f(&[0.0; 3]);

    // embedding
    expect_err(
        b.embedding(&table, 3, &up(b, &[4u32]), &mut out3),
        "embedding",
        &["token 4", "vocabulary of 4"],
    );
    expect_err(
        b.embedding(&table, 3, &up(b, &[u32::MAX]), &mut out3),
        "embedding",
        &["outside vocabulary"],
    );
    expect_err(
        b.embedding(&table, 5, &up(b, &[0u32]), &mut out3),
        "embedding",
        &["not rows of 5"],
    );
    expect_err(
        b.embedding(&table, 0, &up(b, &[0u32]), &mut out3),
        "embedding",
        &["not rows of 0"],
    );
    expect_err(
        b.embedding(&table, 3, &up(b, &[0u32, 1]), &mut out3),
        "embedding",
        &["out has 3", "expected 6"],
    );

    // rms_norm
    let w3 = up(b, &[f16::ONE; 3]);
    expect_err(
        b.rms_norm(&f(&[1.0; 7]), &w3, 1e-5, &mut f(&[0.0; 7])),
        "rms_norm",
        &["x of 7", "rows of 3"],
    );
    expect_err(
        b.rms_norm(&f(&[1.0; 6]), &w3, 1e-5, &mut f(&[0.0; 3])),
        "rms_norm",
        &["out has 3", "expected 6"],
    );
    expect_err(
        b.rms_norm(
            &f(&[1.0; 6]),
            &up(b, &Vec::<f16>::new()),
            1e-5,
            &mut f(&[0.0; 6]),
        ),
        "rms_norm",
        &["rows of 0"],
    );

    // matmul: x [2, 3], w [4, 3], out [2, 4]
    let w = up(b, &[f16::ONE; 12]);
    expect_err(
        b.matmul(&f(&[1.0; 5]), &w, 2, 3, 4, &mut f(&[0.0; 8])),
        "matmul",
        &["x has 5", "expected 6"],
    );
    expect_err(
        b.matmul(
            &f(&[1.0; 6]),
            &up(b, &[f16::ONE; 11]),
            2,
            3,
            4,
            &mut f(&[0.0; 8]),
        ),
        "matmul",
        &["w has 11", "expected 12"],
    );
    expect_err(
        b.matmul(&f(&[1.0; 6]), &w, 2, 3, 4, &mut f(&[0.0; 9])),
        "matmul",
        &["out has 9", "expected 8"],
    );

    // matmul_many: weights must be whole rows of k, one output per weight, outputs [n, m_i]
    expect_err(
        b.matmul_many(
            &f(&[1.0; 6]),
            &[&w, &up(b, &[f16::ONE; 7])],
            2,
            3,
            &mut [&mut f(&[0.0; 8]), &mut f(&[0.0; 4])],
        ),
        "matmul_many",
        &["weight 1 of 7", "rows of k = 3"],
    );
    expect_err(
        b.matmul_many(&f(&[1.0; 6]), &[&w, &w], 2, 3, &mut [&mut f(&[0.0; 8])]),
        "matmul_many",
        &["2 weights but 1 outputs"],
    );
    expect_err(
        b.matmul_many(&f(&[1.0; 6]), &[&w], 2, 3, &mut [&mut f(&[0.0; 7])]),
        "matmul",
        &["out has 7", "expected 8"],
    );

    // rope: x [2 tokens, 1 head, 4]
    let inv = f(&[1.0, 0.01]);
    let pos = up(b, &[0i32, 5]);
    expect_err(
        b.rope(&mut f(&[1.0; 6]), &up(b, &[1i32]), &f(&[1.0]), 3),
        "rope",
        &["head_dim 3", "even"],
    );
    expect_err(
        b.rope(&mut f(&[1.0; 8]), &pos, &f(&[1.0; 4]), 0),
        "rope",
        &["head_dim 0"],
    );
    expect_err(
        b.rope(&mut f(&[1.0; 8]), &pos, &f(&[1.0; 3]), 4),
        "rope",
        &["inv_freq has 3", "expected 2"],
    );
    expect_err(
        b.rope(&mut f(&[1.0; 12]), &pos, &inv, 4),
        "rope",
        &["x of 12", "whole heads of 4"],
    );
    expect_err(
        b.rope(&mut f(&[1.0; 4]), &pos, &inv, 4),
        "rope",
        &["x of 4"],
    );
    // No rows of x for the positions given.
    expect_err(b.rope(&mut f(&[]), &pos, &inv, 4), "rope", &["x of 0"]);
    expect_err(
        b.rope(&mut f(&[1.0; 4]), &up(b, &Vec::<i32>::new()), &inv, 4),
        "rope",
        &["x has 4", "expected 0"],
    );
    // A negative position anywhere leaves x untouched.
    let x0: Vec<f32> = (0..8).map(|i| i as f32 + 0.5).collect();
    let mut x = f(&x0);
    expect_err(
        b.rope(&mut x, &up(b, &[7i32, -1]), &inv, 4),
        "rope",
        &["negative position -1"],
    );
    assert_eq!(down(b, &x), x0, "rope changed x before refusing");

    // silu_mul, add_assign
    expect_err(
        b.silu_mul(&f(&[1.0; 3]), &f(&[1.0; 2]), &mut f(&[0.0; 3])),
        "silu_mul",
        &["up has 2", "expected 3"],
    );
    expect_err(
        b.silu_mul(&f(&[1.0; 3]), &f(&[1.0; 3]), &mut f(&[0.0; 4])),
        "silu_mul",
        &["out has 4", "expected 3"],
    );
    let mut x = f(&[1.0; 3]);
    expect_err(
        b.add_assign(&mut x, &f(&[1.0; 4])),
        "add_assign",
        &["y has 4", "expected 3"],
    );
    assert_eq!(down(b, &x), vec![1.0; 3]);

    // argmax
    let mut o2 = up(b, &[0u32; 2]);
    expect_err(
        b.argmax(&f(&[1.0; 7]), 3, &mut o2),
        "argmax",
        &["logits of 7", "rows of 3"],
    );
    expect_err(
        b.argmax(&f(&[1.0; 6]), 0, &mut o2),
        "argmax",
        &["rows of 0"],
    );
    expect_err(
        b.argmax(&f(&[1.0; 9]), 3, &mut o2),
        "argmax",
        &["out has 2", "expected 3"],
    );

    // sample
    let p = SamplingParams {
        temperature: 1.0,
        top_p: 0.9,
    };
    let logits = f(&[0.5; 6]);
    let u2 = f(&[0.1, 0.2]);
    expect_err(
        b.sample(&f(&[1.0; 7]), 3, p, &u2, &mut o2),
        "sample",
        &["logits of 7"],
    );
    expect_err(
        b.sample(&logits, 3, p, &u2, &mut up(b, &[0u32; 3])),
        "sample",
        &["out has 3", "expected 2"],
    );
    expect_err(
        b.sample(&logits, 3, p, &f(&[0.1]), &mut o2),
        "sample",
        &["uniforms has 1", "expected 2"],
    );
    for t in [-1.0, f32::NAN, f32::INFINITY] {
        let bad = SamplingParams {
            temperature: t,
            top_p: 0.9,
        };
        expect_err(
            b.sample(&logits, 3, bad, &u2, &mut o2),
            "sample",
            &["temperature"],
        );
    }
    for tp in [0.0, -0.5, 1.5, f32::NAN] {
        let bad = SamplingParams {
            temperature: 1.0,
            top_p: tp,
        };
        expect_err(
            b.sample(&logits, 3, bad, &u2, &mut o2),
            "sample",
            &["top_p"],
        );
    }

    // write
    let mut buf = f(&[0.0; 4]);
    expect_err(b.write(&mut buf, 3, &[1.0, 2.0]), "write", &["overflow"]);
    expect_err(
        b.write(&mut buf, usize::MAX, &[1.0]),
        "write",
        &["overflow"],
    );
    assert_eq!(down(b, &buf), vec![0.0; 4]);
}
