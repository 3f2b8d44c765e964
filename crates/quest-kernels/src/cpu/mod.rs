//! The CPU reference backend: plain Rust over `Vec<T>` buffers, f32 accumulation. Every CUDA op is
//! tested against these functions, which are public so users and tests can call them on slices.

pub mod attention;
pub mod dense;
pub mod paged;
pub mod random;
pub mod select;

pub use attention::{decode_attention, prefill_attention};
pub use dense::{add_assign, argmax, embedding, matmul, rms_norm, rope, sample, silu_mul};
pub use paged::{append_kv, update_bounds, update_bounds_int8};
pub use random::{fill_random, hash_uniform};
pub use select::{estimate_pages, estimate_pages_int8, force_pages, mass_prefix, select_top_pages};

use crate::backend::{AttentionShape, Backend, DevicePageTable, SamplingParams, SelectOptions};
use crate::dtype::{Elem, Half};
use crate::error::{Result, expect_len, shape_err};
use crate::layout::{PageTable, PagedLayout, TableRows};

/// The CPU backend. Buffers are `Vec<T>`.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuBackend;

/// The host view of a page table held by the CPU backend.
fn host_table(t: &DevicePageTable<CpuBackend>) -> PageTable {
    PageTable {
        indptr: t.indptr.clone(),
        indices: t.indices.clone(),
        last_page_len: t.last_page_len.clone(),
    }
}

impl Backend for CpuBackend {
    type Buf<T: Elem> = Vec<T>;

    fn name(&self) -> String {
        format!("cpu ({} threads)", rayon::current_num_threads())
    }

    fn zeros<T: Elem>(&self, len: usize) -> Result<Vec<T>> {
        Ok(vec![T::default(); len])
    }

    fn upload<T: Elem>(&self, data: &[T]) -> Result<Vec<T>> {
        Ok(data.to_vec())
    }

    fn download<T: Elem>(&self, buf: &Vec<T>) -> Result<Vec<T>> {
        Ok(buf.clone())
    }

    fn write<T: Elem>(&self, buf: &mut Vec<T>, offset: usize, data: &[T]) -> Result<()> {
        let end = offset.checked_add(data.len()).filter(|&e| e <= buf.len());
        let Some(end) = end else {
            return Err(shape_err(
                "write",
                format!(
                    "{} elements at offset {offset} overflow a buffer of {}",
                    data.len(),
                    buf.len()
                ),
            ));
        };
        buf[offset..end].copy_from_slice(data);
        Ok(())
    }

    fn buf_len<T: Elem>(&self, buf: &Vec<T>) -> usize {
        buf.len()
    }

    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    fn fill_random<T: Half>(&self, buf: &mut Vec<T>, seed: u64, scale: f32) -> Result<()> {
        random::fill_random(buf, seed, scale)
    }

    fn embedding<W: Half>(
        &self,
        table: &Vec<W>,
        hidden: usize,
        tokens: &Vec<u32>,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        dense::embedding(table, hidden, tokens, out)
    }

    fn rms_norm<W: Half>(
        &self,
        x: &Vec<f32>,
        weight: &Vec<W>,
        eps: f32,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        dense::rms_norm(x, weight, eps, out)
    }

    fn matmul<W: Half>(
        &self,
        x: &Vec<f32>,
        w: &Vec<W>,
        n: usize,
        k: usize,
        m: usize,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        dense::matmul(x, w, n, k, m, out)
    }

    fn rope(
        &self,
        x: &mut Vec<f32>,
        positions: &Vec<i32>,
        inv_freq: &Vec<f32>,
        head_dim: usize,
    ) -> Result<()> {
        dense::rope(x, positions, inv_freq, head_dim)
    }

    fn silu_mul(&self, gate: &Vec<f32>, up: &Vec<f32>, out: &mut Vec<f32>) -> Result<()> {
        dense::silu_mul(gate, up, out)
    }

    fn add_assign(&self, x: &mut Vec<f32>, y: &Vec<f32>) -> Result<()> {
        dense::add_assign(x, y)
    }

    fn argmax(&self, logits: &Vec<f32>, vocab: usize, out: &mut Vec<u32>) -> Result<()> {
        dense::argmax(logits, vocab, out)
    }

    fn sample(
        &self,
        logits: &Vec<f32>,
        vocab: usize,
        params: SamplingParams,
        uniforms: &Vec<f32>,
        out: &mut Vec<u32>,
    ) -> Result<()> {
        dense::sample(logits, vocab, params, uniforms, out)
    }

    fn append_kv<T: Half>(
        &self,
        kv: &mut Vec<T>,
        layout: &PagedLayout,
        k: &Vec<f32>,
        v: &Vec<f32>,
        slots: &Vec<i32>,
    ) -> Result<()> {
        paged::append_kv(kv, layout, k, v, slots)
    }

    fn update_bounds<T: Half>(
        &self,
        kv: &Vec<T>,
        bounds: &mut Vec<T>,
        layout: &PagedLayout,
        pages: &Vec<i32>,
        page_lens: &Vec<i32>,
    ) -> Result<()> {
        paged::update_bounds(kv, bounds, layout, pages, page_lens)
    }

    fn update_bounds_int8<T: Half>(
        &self,
        kv: &Vec<T>,
        codes: &mut Vec<u8>,
        params: &mut Vec<f32>,
        layout: &PagedLayout,
        pages: &Vec<i32>,
        page_lens: &Vec<i32>,
    ) -> Result<()> {
        paged::update_bounds_int8(kv, codes, params, layout, pages, page_lens)
    }

    fn estimate_pages_int8(
        &self,
        q: &Vec<f32>,
        codes: &Vec<u8>,
        params: &Vec<f32>,
        shape: &AttentionShape,
        table: &DevicePageTable<Self>,
        scores: &mut Vec<f32>,
    ) -> Result<()> {
        select::estimate_pages_int8(q, codes, params, shape, &host_table(table), scores)
    }

    fn estimate_pages<T: Half>(
        &self,
        q: &Vec<f32>,
        bounds: &Vec<T>,
        shape: &AttentionShape,
        table: &DevicePageTable<Self>,
        scores: &mut Vec<f32>,
    ) -> Result<()> {
        select::estimate_pages(q, bounds, shape, &host_table(table), scores)
    }

    fn force_pages(
        &self,
        scores: &mut Vec<f32>,
        num_qo_heads: usize,
        table: &DevicePageTable<Self>,
        first: usize,
        recent: usize,
    ) -> Result<()> {
        select::force_pages(scores, num_qo_heads, &host_table(table), first, recent)
    }

    fn select_top_pages(
        &self,
        scores: &Vec<f32>,
        shape: &AttentionShape,
        table: &DevicePageTable<Self>,
        opts: SelectOptions,
        out: &mut DevicePageTable<Self>,
        kept: Option<&mut Vec<u64>>,
    ) -> Result<()> {
        const OP: &str = "select_top_pages";
        if let Some(k) = &kept {
            expect_len(OP, "kept counter", k.len(), 1)?;
        }
        let mut result = host_table(out);
        let n = select::select_top_pages(scores, shape, &host_table(table), opts, &mut result)?;
        out.indices = result.indices;
        out.last_page_len = result.last_page_len;
        if let Some(k) = kept {
            k[0] += n;
        }
        Ok(())
    }

    fn decode_attention<T: Half>(
        &self,
        q: &Vec<f32>,
        kv: &Vec<T>,
        shape: &AttentionShape,
        table: &DevicePageTable<Self>,
        rows: TableRows,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        attention::decode_attention(q, kv, shape, &host_table(table), rows, out)
    }

    fn prefill_attention<T: Half>(
        &self,
        q: &Vec<f32>,
        kv: &Vec<T>,
        shape: &AttentionShape,
        table: &DevicePageTable<Self>,
        qo_indptr: &[i32],
        out: &mut Vec<f32>,
    ) -> Result<()> {
        attention::prefill_attention(q, kv, shape, &host_table(table), qo_indptr, out)
    }
}
