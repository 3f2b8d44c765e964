//! `KvCache::fill_random`: synthetic K/V on every layer, never zero, with bounds that are exactly
//! the max/min of each page's filled keys (a partly filled last page included).

use quest_kernels::{Backend, CpuBackend, f16};
use quest_kvcache::{CacheConfig, KvCache};

#[test]
fn fill_random_writes_kv_and_exact_bounds() {
    let cfg = CacheConfig {
        num_layers: 2,
        num_kv_heads: 2,
        head_dim: 4,
        page_size: 8,
        num_pages: 10,
    };
    let mut cache = KvCache::<CpuBackend, f16>::new(&CpuBackend, cfg).unwrap();
    let a = cache.add_sequence();
    let b = cache.add_sequence();
    cache.reserve(a, 21).unwrap(); // 3 pages, last holds 5
    cache.reserve(b, 8).unwrap(); // 1 full page
    cache.fill_random(9, 0.5).unwrap();
    let (h, d, ps) = (2, 4, 8);
    for layer in 0..2 {
        let kv = CpuBackend.download(cache.kv(layer).unwrap()).unwrap();
        let bounds = CpuBackend.download(cache.bounds(layer).unwrap()).unwrap();
        assert!(
            kv.iter()
                .all(|x| x.to_f32() != 0.0 && x.to_f32().abs() <= 0.5)
        );
        for (seq, len) in [(a, 21usize), (b, 8)] {
            for (i, &p) in cache.seq_pages(seq).unwrap().iter().enumerate() {
                let n = (len - i * ps).min(ps);
                for c in 0..h * d {
                    let key = |t: usize| kv[((p as usize * 2) * ps + t) * h * d + c].to_f32();
                    let max = (0..n).map(key).fold(f32::MIN, f32::max);
                    let min = (0..n).map(key).fold(f32::MAX, f32::min);
                    let base = p as usize * 2 * h * d;
                    assert_eq!(bounds[base + c].to_f32(), max, "layer {layer} page {p} max");
                    assert_eq!(
                        bounds[base + h * d + c].to_f32(),
                        min,
                        "layer {layer} page {p} min"
                    );
                }
            }
        }
    }
    // Layers get different streams.
    let k0 = CpuBackend.download(cache.kv(0).unwrap()).unwrap();
    let k1 = CpuBackend.download(cache.kv(1).unwrap()).unwrap();
    assert_ne!(k0, k1);
}
