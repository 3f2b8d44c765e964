//! Rotary position embedding frequencies, computed on the host once per model and uploaded.

/// Llama 3's frequency scaling (`rope_scaling.rope_type == "llama3"` in config.json).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Llama3Scaling {
    pub factor: f32,
    pub low_freq_factor: f32,
    pub high_freq_factor: f32,
    pub original_max_position_embeddings: usize,
}

/// How the rotary frequencies are derived.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RopeConfig {
    pub theta: f32,
    pub head_dim: usize,
    pub scaling: Option<Llama3Scaling>,
}

impl RopeConfig {
    /// `inv_freq[i] = theta^(-2i / head_dim)` for `i < head_dim / 2`, then Llama 3 scaling:
    /// wavelengths longer than `original / low_freq_factor` are divided by `factor`, shorter than
    /// `original / high_freq_factor` kept, and the band between interpolated smoothly.
    /// Computed in f64 and rounded once, like the reference implementations' f32 tables.
    pub fn inv_freq(&self) -> Vec<f32> {
        let half = self.head_dim / 2;
        (0..half)
            .map(|i| {
                let f = (self.theta as f64).powf(-(2.0 * i as f64) / self.head_dim as f64);
                let f = match self.scaling {
                    None => f,
                    Some(s) => llama3_scale(f, &s),
                };
                f as f32
            })
            .collect()
    }
}

fn llama3_scale(freq: f64, s: &Llama3Scaling) -> f64 {
    let original = s.original_max_position_embeddings as f64;
    let low_wavelen = original / s.low_freq_factor as f64;
    let high_wavelen = original / s.high_freq_factor as f64;
    let wavelen = 2.0 * std::f64::consts::PI / freq;
    if wavelen < high_wavelen {
        freq
    } else if wavelen > low_wavelen {
        freq / s.factor as f64
    } else {
        let smooth = (original / wavelen - s.low_freq_factor as f64)
            / (s.high_freq_factor as f64 - s.low_freq_factor as f64);
        (1.0 - smooth) * freq / s.factor as f64 + smooth * freq
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_frequencies_follow_theta() {
        let c = RopeConfig {
            theta: 10000.0,
            head_dim: 8,
            scaling: None,
        };
        let f = c.inv_freq();
        assert_eq!(f.len(), 4);
        assert!((f[0] - 1.0).abs() < 1e-7);
        assert!((f[1] - 0.1).abs() < 1e-7);
        assert!((f[3] - 0.001).abs() < 1e-9);
    }

    #[test]
    fn llama3_scaling_keeps_high_and_divides_low_frequencies() {
        let s = Llama3Scaling {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        };
        let plain = RopeConfig {
            theta: 500000.0,
            head_dim: 128,
            scaling: None,
        }
        .inv_freq();
        let scaled = RopeConfig {
            theta: 500000.0,
            head_dim: 128,
            scaling: Some(s),
        }
        .inv_freq();
        // Highest frequency: wavelength 2π, far below 8192/4: unchanged.
        assert_eq!(plain[0], scaled[0]);
        // Lowest frequency: wavelength far above 8192: divided by the factor.
        let last = plain.len() - 1;
        assert!((scaled[last] * 8.0 - plain[last]).abs() <= plain[last] * 1e-6);
        // Everything in between lies within [f / factor, f].
        for (p, q) in plain.iter().zip(&scaled) {
            assert!(*q <= *p * (1.0 + 1e-6) && *q >= *p / 8.0 * (1.0 - 1e-6));
        }
    }
}
