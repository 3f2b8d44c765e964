//! Launch sizing and the host-side checks of device page tables shared by the kernel families.

use super::CudaBackend;
use crate::backend::DevicePageTable;
use crate::error::{Result, expect_len};
use crate::layout::{EMPTY_PAGE, PagedLayout, check_row_structure};

/// Grid-stride launch size for `n` elements with 256 threads a block.
pub(crate) fn elementwise_grid(n: usize) -> u32 {
    n.div_ceil(256).clamp(1, 65535 * 4) as u32
}

/// Checks a device page table against `layout` like [`crate::PageTable::validate`]: the row
/// structure always (it is on the host), page ids and last-page lengths when the buffers carry
/// host mirrors. Tables produced on the device (selection outputs) were built from validated
/// inputs; the kernels also skip out-of-range pages, so no table can make them read outside the
/// KV buffer.
pub(crate) fn check_table(
    op: &'static str,
    table: &DevicePageTable<CudaBackend>,
    layout: &PagedLayout,
) -> Result<()> {
    check(op, table, layout, false)
}

/// [`check_table`] for decode attention: empty slots ([`EMPTY_PAGE`]) allowed in every slot of a
/// row but its last, as [`crate::PageTable::validate_sparse`].
pub(crate) fn check_table_sparse(
    op: &'static str,
    table: &DevicePageTable<CudaBackend>,
    layout: &PagedLayout,
) -> Result<()> {
    check(op, table, layout, true)
}

/// The row structure of a device table, from its host copy of indptr: starts at 0, never
/// decreases, and matches the lengths of the device buffers (indptr, last_page_len, indices).
/// What every op that walks rows needs before a launch; [`check_table`] adds the page ids and
/// last-page lengths. `what` names the table in the messages ("page table", "output table").
/// The checks and messages of [`crate::PageTable::validate`] (`check_row_structure`), then the
/// device indptr's length.
pub(crate) fn check_rows(
    op: &'static str,
    what: &str,
    table: &DevicePageTable<CudaBackend>,
) -> Result<()> {
    let ip = &table.indptr_host;
    check_row_structure(op, what, ip, table.indices.len(), table.last_page_len.len())?;
    expect_len(
        op,
        &format!("{what} indptr (device)"),
        table.indptr.len(),
        ip.len(),
    )
}

fn check(
    op: &'static str,
    table: &DevicePageTable<CudaBackend>,
    layout: &PagedLayout,
    empty_slots: bool,
) -> Result<()> {
    check_rows(op, "page table", table)?;
    let ip = &table.indptr_host;
    if let Some(last) = &table.last_page_len.mirror {
        for (r, w) in ip.windows(2).enumerate() {
            let l = last[r];
            if w[1] > w[0] && (l < 1 || l as usize > layout.page_size) {
                return Err(crate::error::index_err(
                    op,
                    format!(
                        "row {r}: last_page_len {l} outside 1..={}",
                        layout.page_size
                    ),
                ));
            }
        }
    }
    if let Some(indices) = &table.indices.mirror {
        for w in ip.windows(2) {
            let (start, end) = (w[0] as usize, w[1] as usize);
            for (i, &p) in indices[start..end].iter().enumerate() {
                if empty_slots && p == EMPTY_PAGE && start + i + 1 < end {
                    continue;
                }
                if p < 0 || p as usize >= layout.num_pages {
                    return Err(crate::error::index_err(
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
    }
    Ok(())
}
