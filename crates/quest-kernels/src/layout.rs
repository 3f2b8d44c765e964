//! The paged KV layout, stated once (FlashInfer's NHD convention), and the CSR page tables that
//! describe which pages each sequence (or each head) reads.
//!
//! **KV pages**, one buffer per layer, shape `[num_pages, 2, page_size, num_kv_heads, head_dim]`:
//! index 0 of the second axis holds keys, 1 holds values. Element `(page, kv, slot, head, d)` sits at
//! `(((page * 2 + kv) * page_size + slot) * num_kv_heads + head) * head_dim + d`.
//!
//! **Page bounds**, one buffer per layer, shape `[num_pages, 2, num_kv_heads, head_dim]`: index 0 is
//! the element-wise max of the page's keys (post-RoPE), 1 the min, over the page's filled slots. Same
//! page ids as the KV pages. That is [`BoundsFormat::Full`]: the bounds in the KV storage type.
//!
//! **8-bit page bounds** ([`BoundsFormat::Int8`]), two buffers per layer instead of one:
//! - codes, `u8`, shape `[num_pages, 2, num_kv_heads, head_dim]`, indexed by
//!   [`PagedLayout::bounds_offset`] like the full bounds (0: max, 1: min);
//! - params, `f32`, shape `[num_pages, num_kv_heads, 4]` = `(max_base, max_step, min_base,
//!   min_step)` at [`PagedLayout::int8_params_offset`], one 16-byte vector per page and KV head.
//!
//! A code `c` of kind `k` stands for `dequant(c) = fma(c, step_k, base_k)`, one f32 fused
//! multiply-add (one rounding, the same on every backend). Codes are rounded **outward**: the max
//! codes dequantize to values `>=` the page's max keys, the min codes to values `<=` its min keys,
//! per channel, exactly in f32 ([`crate::quant`] has the encoder and the argument), so the page
//! score stays an upper bound of every key's `q·k`. Per page and KV head that is `2 * head_dim +
//! 16` bytes against `2 * head_dim * 2` for f16 bounds: 272 against 512 at head_dim 128 (53%),
//! 144 against 256 at head_dim 64 (56%).
//!
//! **A token's slot** is `page * page_size + offset` with `0 <= offset < page_size`.
//!
//! **A page table** (CSR) has `rows + 1` entries of `indptr`; row `r` reads pages
//! `indices[indptr[r]..indptr[r + 1]]` in order, every one full except the last, which holds
//! `last_page_len[r]` tokens (`1 <= last_page_len <= page_size`). A row's length in tokens is
//! `page_size * (n_pages - 1) + last_page_len`. A row is a sequence (dense attention, selection
//! input) or one head of a sequence (sparse attention after selection), see [`TableRows`].
//!
//! **Empty slots.** A page id of [`EMPTY_PAGE`] (-1) in a table that decode attention reads is a
//! slot with no page: it holds no tokens, contributes nothing to the softmax and reads no K/V
//! bytes. Only the adaptive budget of [`crate::Backend::select_top_pages`] writes them (a row of
//! a selection keeps its fixed `min(n, budget)` slots: the kept pages in table order, then the
//! empty slots, then the sequence's last page). A row's last slot is never empty (it holds the
//! `last_page_len` tokens), and only decode attention accepts empty slots
//! ([`PageTable::validate_sparse`]); every other op refuses them ([`PageTable::validate`]).

use crate::error::{Result, arg_err, index_err, shape_err};

/// The page id of an empty slot in a selection's page table (see the module docs).
pub const EMPTY_PAGE: i32 = -1;

/// Geometry of one layer's KV pages. Every kernel that touches the cache takes this.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PagedLayout {
    pub num_pages: usize,
    pub page_size: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

impl PagedLayout {
    /// Elements in the KV buffer of one layer.
    pub fn kv_len(&self) -> usize {
        self.num_pages * 2 * self.page_size * self.num_kv_heads * self.head_dim
    }

    /// Elements in the bounds buffer of one layer.
    pub fn bounds_len(&self) -> usize {
        self.num_pages * 2 * self.num_kv_heads * self.head_dim
    }

    /// Elements of one token's K (or V) across heads: `num_kv_heads * head_dim`.
    pub fn token_width(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }

    /// Offset of `(page, kv, slot, head, 0)`; `kv` is 0 for keys, 1 for values.
    #[inline]
    pub fn kv_offset(&self, page: usize, kv: usize, slot: usize, head: usize) -> usize {
        (((page * 2 + kv) * self.page_size + slot) * self.num_kv_heads + head) * self.head_dim
    }

    /// Offset of `(page, which, head, 0)` in the bounds buffer; `which` is 0 for max, 1 for min.
    #[inline]
    pub fn bounds_offset(&self, page: usize, which: usize, head: usize) -> usize {
        ((page * 2 + which) * self.num_kv_heads + head) * self.head_dim
    }

    /// f32 elements in the params buffer of one layer's 8-bit bounds (its codes buffer has
    /// [`bounds_len`](Self::bounds_len) bytes).
    pub fn int8_params_len(&self) -> usize {
        self.num_pages * self.num_kv_heads * 4
    }

    /// Offset of `(page, head)`'s `(max_base, max_step, min_base, min_step)` in the params buffer
    /// of 8-bit bounds.
    #[inline]
    pub fn int8_params_offset(&self, page: usize, head: usize) -> usize {
        (page * self.num_kv_heads + head) * 4
    }

    /// Rejects geometry the kernels do not support.
    pub fn validate(&self, op: &'static str) -> Result<()> {
        if self.page_size == 0 || self.num_kv_heads == 0 || self.head_dim == 0 {
            return Err(arg_err(op, format!("empty layout {self:?}")));
        }
        if self.num_pages > i32::MAX as usize / self.page_size {
            return Err(arg_err(
                op,
                "num_pages * page_size does not fit in i32 slots",
            ));
        }
        // kv_len() (the largest product) must not overflow: callers compare it to buffer lengths.
        let kv_len = [2, self.page_size, self.num_kv_heads, self.head_dim]
            .iter()
            .try_fold(self.num_pages, |acc, &x| acc.checked_mul(x));
        // Nor the params of 8-bit bounds (4 floats a page and head, more than the KV when
        // page_size * head_dim < 2).
        let params_len = self
            .num_pages
            .checked_mul(self.num_kv_heads)
            .and_then(|x| x.checked_mul(4));
        if kv_len.is_none() || params_len.is_none() {
            return Err(arg_err(
                op,
                format!("layout {self:?}: KV buffer size overflows usize"),
            ));
        }
        Ok(())
    }
}

/// How a cache stores its page bounds (see the module docs for both layouts).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum BoundsFormat {
    /// Max and min keys in the KV storage type (f16 or bf16): exact.
    #[default]
    Full,
    /// 8-bit codes rounded outward plus per-(page, KV head) f32 base and step: about half the
    /// bytes for the estimate to read; scores stay upper bounds, a little looser.
    Int8,
}

impl BoundsFormat {
    /// Bytes of one page's bounds for one KV head, when the KV is stored in `elem_bytes`-byte
    /// elements: `2 * head_dim * elem_bytes` (full) or `2 * head_dim + 16` (int8).
    pub fn bytes_per_page_head(self, head_dim: usize, elem_bytes: usize) -> usize {
        match self {
            BoundsFormat::Full => 2 * head_dim * elem_bytes,
            BoundsFormat::Int8 => 2 * head_dim + 16,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            BoundsFormat::Full => "full",
            BoundsFormat::Int8 => "int8",
        }
    }
}

impl std::fmt::Display for BoundsFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What the rows of a page table stand for, in a batch of `batch` sequences.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableRows {
    /// Row `b` is sequence `b`; every head reads the same pages.
    PerSequence,
    /// Row `b * num_qo_heads + h` is query head `h` of sequence `b`.
    PerQoHead,
    /// Row `b * num_kv_heads + g` is KV head `g` of sequence `b`, shared by its GQA group.
    PerKvHead,
}

impl TableRows {
    /// Rows a table of this kind has for `batch` sequences.
    pub fn count(self, batch: usize, num_qo_heads: usize, num_kv_heads: usize) -> usize {
        match self {
            TableRows::PerSequence => batch,
            TableRows::PerQoHead => batch * num_qo_heads,
            TableRows::PerKvHead => batch * num_kv_heads,
        }
    }

    /// The row that query head `h` of sequence `b` reads.
    #[inline]
    pub fn row(self, b: usize, h: usize, num_qo_heads: usize, num_kv_heads: usize) -> usize {
        match self {
            TableRows::PerSequence => b,
            TableRows::PerQoHead => b * num_qo_heads + h,
            TableRows::PerKvHead => b * num_kv_heads + h / (num_qo_heads / num_kv_heads),
        }
    }
}

/// A CSR page table on the host. See the module docs for the convention.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PageTable {
    pub indptr: Vec<i32>,
    pub indices: Vec<i32>,
    pub last_page_len: Vec<i32>,
}

impl PageTable {
    /// An empty table with zero rows.
    pub fn new() -> Self {
        PageTable {
            indptr: vec![0],
            indices: Vec::new(),
            last_page_len: Vec::new(),
        }
    }

    /// Appends a row reading `pages`, the last holding `last_page_len` tokens.
    pub fn push_row(&mut self, pages: &[i32], last_page_len: i32) {
        if self.indptr.is_empty() {
            self.indptr.push(0);
        }
        self.indices.extend_from_slice(pages);
        self.indptr.push(self.indices.len() as i32);
        self.last_page_len.push(last_page_len);
    }

    pub fn rows(&self) -> usize {
        self.indptr.len().saturating_sub(1)
    }

    /// Pages read by row `r` (callers validate first).
    pub fn row(&self, r: usize) -> &[i32] {
        &self.indices[self.indptr[r] as usize..self.indptr[r + 1] as usize]
    }

    /// Tokens in row `r`: `page_size * (n_pages - 1) + last_page_len`, 0 for an empty row.
    pub fn row_tokens(&self, r: usize, page_size: usize) -> usize {
        let n = (self.indptr[r + 1] - self.indptr[r]) as usize;
        if n == 0 {
            0
        } else {
            page_size * (n - 1) + self.last_page_len[r] as usize
        }
    }

    /// Checks the CSR structure against `layout`: monotone `indptr` starting at 0 and ending at
    /// `indices.len()`, page ids in range, `1 <= last_page_len <= page_size` for non-empty rows.
    pub fn validate(&self, op: &'static str, layout: &PagedLayout) -> Result<()> {
        self.check(op, layout, false)
    }

    /// [`validate`](Self::validate), but [`EMPTY_PAGE`] is also accepted in every slot of a row
    /// but its last: a table decode attention may read.
    pub fn validate_sparse(&self, op: &'static str, layout: &PagedLayout) -> Result<()> {
        self.check(op, layout, true)
    }

    fn check(&self, op: &'static str, layout: &PagedLayout, empty_slots: bool) -> Result<()> {
        check_row_structure(
            op,
            "page table",
            &self.indptr,
            self.indices.len(),
            self.last_page_len.len(),
        )?;
        for r in 0..self.rows() {
            let n = self.indptr[r + 1] - self.indptr[r];
            let last = self.last_page_len[r];
            if n > 0 && (last < 1 || last as usize > layout.page_size) {
                return Err(index_err(
                    op,
                    format!(
                        "row {r}: last_page_len {last} outside 1..={}",
                        layout.page_size
                    ),
                ));
            }
        }
        // indptr is monotone and spans indices (checked above), so the rows cover every slot.
        for w in self.indptr.windows(2) {
            let (start, end) = (w[0] as usize, w[1] as usize);
            for (i, &p) in self.indices[start..end].iter().enumerate() {
                // A row's last slot holds its last page: never empty.
                if empty_slots && p == EMPTY_PAGE && start + i + 1 < end {
                    continue;
                }
                if p < 0 || p as usize >= layout.num_pages {
                    return Err(index_err(
                        op,
                        format!(
                            "page id {p} at position {} outside 0..{}",
                            start + i,
                            layout.num_pages
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The row structure of a CSR page table (`what` names it in the messages): `indptr` starts at 0,
/// has one `last_page_len` entry per row, ends at the number of `indices` and never decreases.
/// Shared by [`PageTable::validate`], the CPU `force_pages` and the CUDA backend's checks of
/// device tables (on their host copy of `indptr`), so every backend refuses the same tables with
/// the same words.
pub(crate) fn check_row_structure(
    op: &'static str,
    what: &str,
    indptr: &[i32],
    num_indices: usize,
    num_last_page_len: usize,
) -> Result<()> {
    if indptr.first() != Some(&0) {
        return Err(shape_err(op, format!("{what} indptr must start with 0")));
    }
    let rows = indptr.len() - 1;
    if num_last_page_len != rows {
        return Err(shape_err(
            op,
            format!("{what} has {rows} rows but {num_last_page_len} last_page_len entries"),
        ));
    }
    if indptr[rows] as usize != num_indices {
        return Err(shape_err(
            op,
            format!(
                "{what} indptr ends at {} but indices has {num_indices} entries",
                indptr[rows]
            ),
        ));
    }
    if let Some(r) = indptr.windows(2).position(|w| w[1] < w[0]) {
        return Err(shape_err(op, format!("{what} indptr decreases at row {r}")));
    }
    Ok(())
}
