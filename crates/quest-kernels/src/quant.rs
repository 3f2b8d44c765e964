//! The encoder of 8-bit page bounds ([`crate::layout::BoundsFormat::Int8`]), shared by the CPU
//! reference and mirrored operation for operation by `ptx/bounds_int8.cu`, so both backends write
//! the same bytes.
//!
//! **Encoding.** One vector `v` (the max keys, or the min keys, of one page and KV head) becomes a
//! `base`, a `step` and one code `c_i` in `0..=255` per channel, standing for
//! `dequant(c) = fma(c, step, base)` (f32, one rounding). [`encode_up`] (for the max keys) makes
//! every `dequant(c_i) >= v_i`; [`encode_down`] (for the min keys) every `dequant(c_i) <= v_i`.
//!
//! [`encode_up`]: with `a = min v`, `b = max v`, the step starts at `(b/2 - a/2) / 127.5` and is
//! raised one ulp at a time until `fma(255, step, a) >= b`, so code 255 covers the largest value;
//! `base = a`. Each code is the **smallest** `c` with `fma(c, step, a) >= v_i`: a first guess
//! `ceil((v_i - a) / step)` moved up or down by the exact test. It exists (code 255 qualifies) and
//! is unique, because `fma(c, step, a)` is non-decreasing in `c` (the exact `c·step + a` grows and
//! rounding is monotone). So the bound holds **exactly in f32**, whatever rounding the guess took,
//! and the codes are as tight as the step allows (`dequant(c_i) - v_i <= step` up to one rounding).
//! [`encode_down`] encodes `-v` upward and negates base and step: `fma(c, -s, -a) = -fma(c, s, a)`
//! exactly (round-to-nearest is symmetric), so the min codes count down from `max v`.
//!
//! Non-finite values: a `+inf` or NaN in an upward vector gives `base = +inf, step = 0` (every
//! channel dequantizes to `+inf`, a valid bound); `-inf` is treated as `-f32::MAX` (any value
//! bounds it from above) and `-0.0` as `+0.0`. Downward, the same by symmetry.
//!
//! **Why the score stays an upper bound.** With `H_i >= M_i` and `L_i <= m_i` (the dequantized max
//! and min codes against the page's true max and min keys, stored values in f32) and `m_i <= k_i <=
//! M_i` for every key of the page, each term `max(q_i·H_i, q_i·L_i) >= q_i·k_i` in real arithmetic,
//! and in f32 each product is monotone in its factor, so the f32 score with 8-bit bounds is `>=`
//! the score with exact bounds summed in the same order, which bounds `max_k q·k` up to the
//! f32 rounding of a `head_dim`-term sum (see the property tests in `tests/int8_bounds.rs`).

/// The largest code.
pub const CODE_MAX: u8 = 255;

/// The value a code stands for: `fma(code, step, base)` in f32 (one rounding on every backend).
#[inline]
pub fn dequant(code: u8, base: f32, step: f32) -> f32 {
    (code as f32).mul_add(step, base)
}

/// Encodes `values` rounding up: afterwards `dequant(codes[i], base, step) >= values[i]` for every
/// `i`, with `(base, step)` returned. `codes` must be as long as `values`.
pub fn encode_up(values: &[f32], codes: &mut [u8]) -> (f32, f32) {
    encode_up_by(values.len(), |i| values[i], codes)
}

/// Encodes `values` rounding down: afterwards `dequant(codes[i], base, step) <= values[i]` for
/// every `i`, with `(base, step)` returned (`step <= 0`: code 0 is the largest value).
pub fn encode_down(values: &[f32], codes: &mut [u8]) -> (f32, f32) {
    let (base, step) = encode_up_by(values.len(), |i| -values[i], codes);
    (-base, -step)
}

/// [`encode_up`] of `value(0..n)`; what the CUDA kernel does for one (page, head, kind).
fn encode_up_by(n: usize, value: impl Fn(usize) -> f32, codes: &mut [u8]) -> (f32, f32) {
    let codes = &mut codes[..n];
    let (mut a, mut b, mut unbounded) = (f32::INFINITY, f32::NEG_INFINITY, false);
    for i in 0..n {
        let x = value(i);
        unbounded |= x.is_nan() || x == f32::INFINITY;
        let w = clamp(x);
        a = a.min(w);
        b = b.max(w);
    }
    let step = if unbounded || n == 0 {
        None
    } else {
        step_for(a, b)
    };
    let Some(step) = step else {
        codes.fill(0);
        return (f32::INFINITY, 0.0);
    };
    for (i, c) in codes.iter_mut().enumerate() {
        *c = code_up(clamp(value(i)), a, step);
    }
    (a, step)
}

/// `-inf` (and NaN) to `-f32::MAX`, `-0.0` to `+0.0` (so min and max never meet zeros of both
/// signs, whose order `f32::max` and CUDA's `fmaxf` may break differently); exact otherwise.
#[inline]
fn clamp(x: f32) -> f32 {
    x.max(-f32::MAX) + 0.0
}

/// The smallest step `>= (b - a) / 255` (about) with `fma(255, step, a) >= b`; `a <= b` finite.
/// `None` only if 64 one-ulp raises do not get there (never seen; the caller then falls back to
/// the trivially valid `+inf` base).
pub fn step_for(a: f32, b: f32) -> Option<f32> {
    // Halves first so the difference cannot overflow; every operation is a plain IEEE one.
    let mut s = (b * 0.5 - a * 0.5) / 127.5;
    for _ in 0..64 {
        if (CODE_MAX as f32).mul_add(s, a) >= b {
            return Some(s);
        }
        s = f32::from_bits(s.to_bits() + 1); // s >= 0: the next larger f32
    }
    None
}

/// The smallest code `c` with `fma(c, step, a) >= w`, given `a <= w <= b` and a step from
/// [`step_for`]`(a, b)`.
pub fn code_up(w: f32, a: f32, step: f32) -> u8 {
    if step == 0.0 {
        return 0;
    }
    let guess = ((w - a) / step).ceil().max(0.0).min(CODE_MAX as f32);
    let mut c = guess as u32;
    while c < CODE_MAX as u32 && (c as f32).mul_add(step, a) < w {
        c += 1;
    }
    while c > 0 && ((c - 1) as f32).mul_add(step, a) >= w {
        c -= 1;
    }
    c as u8
}
