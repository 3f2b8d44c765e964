//! The CUDA backend: the kernels of `ptx/*.cu`, embedded as PTX and loaded through `cudarc` with
//! the driver found at run time, so this builds (and the CPU backend runs) on machines with no
//! CUDA toolkit and no driver. One submodule per `.cu` file; this one holds the backend, its
//! buffers and the memory ops.
//!
//! `cust` (the crate the project card named) panics in its build script without a CUDA install
//! and links `libcuda` at link time; `cudarc` with dynamic loading does neither.

mod attention;
mod bounds_int8;
mod branch;
mod buf;
mod checks;
mod dense;
mod device;
mod gemv;
mod launch;
mod paged;
mod random;
mod sampling;
mod select;
mod timing;

pub use buf::CudaBuf;
pub use timing::CudaTimer;

use branch::Branch;
use buf::{MIRROR_MAX, as_bytes, as_bytes_mut, check_pod, is_int};
use checks::{check_rows, check_table, check_table_sparse, elementwise_grid};
use device::{Family, PtxArch, guarded, probe};

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr};
use cudarc::nvrtc::Ptx;

use crate::backend::{AttentionShape, Backend, DevicePageTable, SamplingParams, SelectOptions};
use crate::dtype::{DType, Elem, Half};
use crate::error::{KernelError, Result, arg_err, shape_err};
use crate::layout::{PagedLayout, TableRows};

/// The kernel-name suffix of a storage type.
fn suffix<T: Half>(op: &'static str) -> Result<&'static str> {
    match T::DTYPE {
        DType::F16 => Ok("f16"),
        DType::Bf16 => Ok("bf16"),
        DType::F32 => Ok("f32"),
        other => Err(arg_err(
            op,
            format!("no CUDA kernels for storage type {other}"),
        )),
    }
}

pub(crate) fn cuda_err(op: &'static str, e: impl std::fmt::Display) -> KernelError {
    KernelError::Cuda {
        op,
        msg: e.to_string(),
    }
}

struct Inner {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    name: String,
    num_sms: u32,
    /// Which PTX the modules load: sm_90 (with `griddepcontrol`) on compute capability 9.0 and
    /// newer, sm_80 otherwise.
    arch: PtxArch,
    /// Launches carry the programmatic-dependent-launch attribute (`launch.rs`).
    pdl: bool,
    modules: Mutex<HashMap<Family, Arc<CudaModule>>>,
    functions: Mutex<HashMap<String, CudaFunction>>,
    /// Split-K partial results and tickets, reused across calls (`CudaBackend::scratch`).
    scratch: Mutex<ScratchArea>,
    /// The branch (`Backend::branch_begin`), `branch.rs`.
    branch: Branch,
    /// Dynamic shared memory (words) the plain and the adaptive top-k may use for a row's keys
    /// (`select.rs`, `key_room`), found on first need.
    topk_key_room: [OnceLock<usize>; 2],
}

/// Split-K partials and the decode kernels' merge tickets (zero between launches).
#[derive(Default)]
struct ScratchArea {
    partials: Option<CudaSlice<u8>>,
    tickets: Option<CudaSlice<u8>>,
}

/// The backend's scratch area, held (locked) by one op while it queues the launches that use it.
pub(crate) struct Scratch<'a> {
    pub(crate) ptr: u64,
    pub(crate) tickets: u64,
    _held: std::sync::MutexGuard<'a, ScratchArea>,
}

/// The CUDA backend: one device, one stream; every op is queued on that stream.
#[derive(Clone)]
pub struct CudaBackend {
    inner: Arc<Inner>,
}

impl CudaBackend {
    /// Opens device `ordinal`. Without a driver or a GPU this returns [`KernelError::NoDevice`]
    /// (never panics). The PTX modules are JIT-compiled by the driver on first use.
    pub fn new(ordinal: usize) -> Result<Self> {
        probe(ordinal)?;
        let ctx =
            guarded("creating a CUDA context", || CudaContext::new(ordinal))?.map_err(|e| {
                KernelError::NoDevice(format!("cannot open CUDA device {ordinal}: {e}"))
            })?;
        // SAFETY: this backend orders its work itself: one main stream, plus the branch stream
        // of `Backend::branch_begin`, ordered against it with explicit events (allocations and
        // uploads always go to the main stream); cudarc's per-buffer event tracking is not needed.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.default_stream();
        let dev = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        let num_sms = ctx
            .attribute(
                cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
            )
            .map_err(|e| cuda_err("new", e))?
            .max(1) as u32;
        let major = ctx
            .attribute(
                cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR,
            )
            .map_err(|e| cuda_err("new", e))?;
        let arch = if major >= 9 {
            PtxArch::Sm90
        } else {
            PtxArch::Sm80
        };
        let pdl = arch == PtxArch::Sm90 && std::env::var("QUEST_PDL").map_or(true, |v| v != "0");
        let branch = Branch::new(&ctx)?;
        Ok(CudaBackend {
            inner: Arc::new(Inner {
                ctx,
                stream,
                name: format!(
                    "cuda:{ordinal} ({dev}, {})",
                    if pdl { "PDL" } else { "no PDL" }
                ),
                num_sms,
                arch,
                pdl,
                modules: Mutex::new(HashMap::new()),
                functions: Mutex::new(HashMap::new()),
                scratch: Mutex::new(ScratchArea::default()),
                branch,
                topk_key_room: [OnceLock::new(), OnceLock::new()],
            }),
        })
    }

    /// Whether a driver and at least one CUDA device are present.
    pub fn is_available() -> bool {
        probe(0).is_ok()
    }

    /// Why [`CudaBackend::new`]`(0)` would fail, or `None` when a device is there.
    pub fn unavailable_reason() -> Option<String> {
        probe(0).err().map(|e| e.to_string())
    }

    /// The stream every op is queued on (for events and timing).
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.inner.stream
    }

    pub(crate) fn num_sms(&self) -> u32 {
        self.inner.num_sms
    }

    pub(crate) fn topk_key_room(&self) -> &[OnceLock<usize>; 2] {
        &self.inner.topk_key_room
    }

    /// How many candidates a top-k row (plain, or `adaptive`) may have and still keep its keys
    /// in shared memory on this device; longer rows re-read global memory on every pass. For
    /// the tests, which put rows right at the limit.
    #[doc(hidden)]
    pub fn top_k_shared_key_capacity(&self, adaptive: bool) -> Result<usize> {
        select::shared_key_capacity(self, adaptive)
    }

    /// The stream ops are queued on now: the main stream, or the branch's between
    /// `branch_begin` and `branch_end`.
    pub(crate) fn queue(&self) -> &Arc<CudaStream> {
        self.inner.branch.queue(&self.inner.stream)
    }

    /// Inside a branch, makes the branch wait for what the main stream has queued (an allocation
    /// or upload, which always go to the main stream so their memory is freed in its order).
    fn order_branch_after_main(&self, op: &'static str) -> Result<()> {
        self.inner.branch.order_after_main(&self.inner.stream, op)
    }

    /// Whether kernel launches use programmatic dependent launch (sm_90+, unless `QUEST_PDL=0`).
    pub fn pdl(&self) -> bool {
        self.inner.pdl
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.inner.ctx
    }

    /// The kernel `name` of `family`, loading (JIT-compiling) the module on first use.
    pub(crate) fn func(
        &self,
        op: &'static str,
        family: Family,
        name: &str,
    ) -> Result<CudaFunction> {
        let mut fns = self
            .inner
            .functions
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(f) = fns.get(name) {
            return Ok(f.clone());
        }
        let module = {
            let mut mods = self.inner.modules.lock().unwrap_or_else(|p| p.into_inner());
            match mods.get(&family) {
                Some(m) => m.clone(),
                None => {
                    let m = self
                        .inner
                        .ctx
                        .load_module(Ptx::from_src(family.ptx(self.inner.arch)))
                        .map_err(|e| cuda_err(op, format!("loading {family:?} PTX: {e}")))?;
                    mods.insert(family, m.clone());
                    m
                }
            }
        };
        let f = module
            .load_function(name)
            .map_err(|e| cuda_err(op, format!("kernel {name}: {e}")))?;
        fns.insert(name.to_string(), f.clone());
        Ok(f)
    }

    /// A device scratch area of at least `bytes`, and `tickets` zeroed `int`s (the decode
    /// kernels' split counters, which each launch leaves zero again), reused across calls. Both
    /// are the caller's until the returned guard drops: keep it alive until every launch that
    /// uses them is queued. Stream order then keeps those launches ahead of the next holder's
    /// (and of the free when a later call needs more room), even when several threads share
    /// this backend: without the lock, another thread's split-K decode could land between this
    /// one's decode and merge, or free the area under it.
    pub(crate) fn scratch(
        &self,
        op: &'static str,
        bytes: usize,
        tickets: usize,
    ) -> Result<Scratch<'_>> {
        let mut s = self.inner.scratch.lock().unwrap_or_else(|p| p.into_inner());
        let area = &mut *s;
        let partials = self.grown(op, &mut area.partials, bytes)?;
        let tickets = if tickets > 0 {
            self.grown(op, &mut area.tickets, tickets * 4)?
        } else {
            0
        };
        Ok(Scratch {
            ptr: partials,
            tickets,
            _held: s,
        })
    }

    /// `slot`'s device pointer after growing it (zeroed) to at least `bytes`.
    fn grown(
        &self,
        op: &'static str,
        slot: &mut Option<CudaSlice<u8>>,
        bytes: usize,
    ) -> Result<u64> {
        if slot.as_ref().is_none_or(|m| m.len() < bytes) {
            *slot = None; // free first: the old area is stream-ordered behind earlier kernels
            let m = self
                .stream()
                .alloc_zeros::<u8>(bytes.max(256))
                .map_err(|e| cuda_err(op, e))?;
            *slot = Some(m);
            self.order_branch_after_main(op)?;
        }
        slot.as_ref()
            .map(|m| m.device_ptr(self.stream()).0)
            .ok_or_else(|| cuda_err(op, "scratch allocation vanished"))
    }

    fn wrap<T: Elem>(
        &self,
        mem: Option<CudaSlice<u8>>,
        len: usize,
        mirror: Option<Vec<T>>,
    ) -> CudaBuf<T> {
        let ptr = mem
            .as_ref()
            .map(|m| m.device_ptr(self.stream()).0)
            .unwrap_or(0);
        CudaBuf {
            mem,
            ptr,
            len,
            mirror,
        }
    }

    /// The buffer's contents on the host: the mirror when there is one (borrowed: ops check
    /// indices on every decode step), else a download.
    pub(crate) fn host_ints<'a, T: Elem>(&self, buf: &'a CudaBuf<T>) -> Result<Cow<'a, [T]>> {
        match &buf.mirror {
            Some(m) => Ok(Cow::Borrowed(m)),
            None => self.download(buf).map(Cow::Owned),
        }
    }

    /// RoPE's position check (the CPU's message): no negative position.
    pub(crate) fn check_positions(&self, op: &'static str, positions: &CudaBuf<i32>) -> Result<()> {
        match self.host_ints(positions)?.iter().find(|&&p| p < 0) {
            Some(&pos) => Err(crate::error::index_err(
                op,
                format!("negative position {pos}"),
            )),
            None => Ok(()),
        }
    }
}

impl Backend for CudaBackend {
    type Buf<T: Elem> = CudaBuf<T>;

    fn name(&self) -> String {
        self.inner.name.clone()
    }

    fn zeros<T: Elem>(&self, len: usize) -> Result<CudaBuf<T>> {
        check_pod::<T>("zeros")?;
        let bytes = len
            .checked_mul(std::mem::size_of::<T>())
            .ok_or_else(|| shape_err("zeros", format!("{len} elements overflow")))?;
        let mem = if bytes == 0 {
            None
        } else {
            Some(
                self.stream()
                    .alloc_zeros::<u8>(bytes)
                    .map_err(|e| cuda_err("zeros", e))?,
            )
        };
        self.order_branch_after_main("zeros")?;
        let mirror = (is_int::<T>() && len <= MIRROR_MAX).then(|| vec![T::default(); len]);
        Ok(self.wrap(mem, len, mirror))
    }

    fn upload<T: Elem>(&self, data: &[T]) -> Result<CudaBuf<T>> {
        check_pod::<T>("upload")?;
        let mem = if data.is_empty() {
            None
        } else {
            Some(
                self.stream()
                    .clone_htod(as_bytes(data))
                    .map_err(|e| cuda_err("upload", e))?,
            )
        };
        self.order_branch_after_main("upload")?;
        let mirror = (is_int::<T>() && data.len() <= MIRROR_MAX).then(|| data.to_vec());
        Ok(self.wrap(mem, data.len(), mirror))
    }

    fn download<T: Elem>(&self, buf: &CudaBuf<T>) -> Result<Vec<T>> {
        check_pod::<T>("download")?;
        let mut out = vec![T::default(); buf.len];
        if let Some(mem) = &buf.mem {
            self.queue()
                .memcpy_dtoh(mem, as_bytes_mut(&mut out))
                .map_err(|e| cuda_err("download", e))?;
            self.queue()
                .synchronize()
                .map_err(|e| cuda_err("download", e))?;
        }
        Ok(out)
    }

    fn write<T: Elem>(&self, buf: &mut CudaBuf<T>, offset: usize, data: &[T]) -> Result<()> {
        check_pod::<T>("write")?;
        let end = offset.checked_add(data.len()).filter(|&e| e <= buf.len);
        let Some(end) = end else {
            return Err(shape_err(
                "write",
                format!(
                    "{} elements at offset {offset} overflow a buffer of {}",
                    data.len(),
                    buf.len
                ),
            ));
        };
        if data.is_empty() {
            return Ok(());
        }
        let sz = std::mem::size_of::<T>();
        let mem = buf
            .mem
            .as_mut()
            .ok_or_else(|| cuda_err("write", "buffer has no memory"))?;
        let mut view = mem.slice_mut(offset * sz..end * sz);
        self.queue()
            .memcpy_htod(as_bytes(data), &mut view)
            .map_err(|e| cuda_err("write", e))?;
        if let Some(m) = &mut buf.mirror {
            m[offset..end].copy_from_slice(data);
        }
        Ok(())
    }

    fn buf_len<T: Elem>(&self, buf: &CudaBuf<T>) -> usize {
        buf.len
    }

    fn synchronize(&self) -> Result<()> {
        self.inner.branch.synchronize()?;
        self.stream()
            .synchronize()
            .map_err(|e| cuda_err("synchronize", e))
    }

    fn branch_begin(&self) -> Result<()> {
        self.inner.branch.begin(&self.inner.stream)
    }

    fn branch_end(&self) -> Result<()> {
        self.inner.branch.end()
    }

    fn branch_join(&self) -> Result<()> {
        self.inner.branch.join(&self.inner.stream)
    }

    fn fill_random<T: Half>(&self, buf: &mut CudaBuf<T>, seed: u64, scale: f32) -> Result<()> {
        random::fill_random(self, buf, seed, scale)
    }

    fn embedding<W: Half>(
        &self,
        table: &CudaBuf<W>,
        hidden: usize,
        tokens: &CudaBuf<u32>,
        out: &mut CudaBuf<f32>,
    ) -> Result<()> {
        dense::embedding(self, table, hidden, tokens, out)
    }

    fn rms_norm<W: Half>(
        &self,
        x: &CudaBuf<f32>,
        weight: &CudaBuf<W>,
        eps: f32,
        out: &mut CudaBuf<f32>,
    ) -> Result<()> {
        dense::rms_norm(self, x, weight, eps, out)
    }

    fn matmul<W: Half>(
        &self,
        x: &CudaBuf<f32>,
        w: &CudaBuf<W>,
        n: usize,
        k: usize,
        m: usize,
        out: &mut CudaBuf<f32>,
    ) -> Result<()> {
        dense::matmul(self, x, w, n, k, m, out)
    }

    fn matmul_many<W: Half>(
        &self,
        x: &CudaBuf<f32>,
        ws: &[&CudaBuf<W>],
        n: usize,
        k: usize,
        outs: &mut [&mut CudaBuf<f32>],
    ) -> Result<()> {
        dense::matmul_many(self, x, ws, n, k, outs)
    }

    fn rms_norm_matmul_many<W: Half>(
        &self,
        x: &CudaBuf<f32>,
        norm: &CudaBuf<W>,
        eps: f32,
        ws: &[&CudaBuf<W>],
        n: usize,
        k: usize,
        outs: &mut [&mut CudaBuf<f32>],
    ) -> Result<()> {
        gemv::rms_norm_matmul_many(self, x, norm, eps, ws, n, k, outs)
    }

    fn qkv_projection<W: Half>(
        &self,
        x: &CudaBuf<f32>,
        norm: &CudaBuf<W>,
        eps: f32,
        w: [&CudaBuf<W>; 3],
        n: usize,
        k: usize,
        out: [&mut CudaBuf<f32>; 3],
        rope: &crate::fused::RopeInput<'_, Self>,
    ) -> Result<()> {
        gemv::qkv_projection(self, x, norm, eps, w, n, k, out, rope)
    }

    fn rms_norm_swiglu<W: Half>(
        &self,
        x: &CudaBuf<f32>,
        norm: &CudaBuf<W>,
        eps: f32,
        w_gate: &CudaBuf<W>,
        w_up: &CudaBuf<W>,
        n: usize,
        k: usize,
        out: &mut CudaBuf<f32>,
    ) -> Result<()> {
        gemv::rms_norm_swiglu(self, x, norm, eps, w_gate, w_up, n, k, out)
    }

    fn matmul_add<W: Half>(
        &self,
        x: &CudaBuf<f32>,
        w: &CudaBuf<W>,
        n: usize,
        k: usize,
        m: usize,
        out: &mut CudaBuf<f32>,
    ) -> Result<()> {
        gemv::matmul_add(self, x, w, n, k, m, out)
    }

    fn rope(
        &self,
        x: &mut CudaBuf<f32>,
        positions: &CudaBuf<i32>,
        inv_freq: &CudaBuf<f32>,
        head_dim: usize,
    ) -> Result<()> {
        dense::rope(self, x, None, positions, inv_freq, head_dim)
    }

    fn rope_qk(
        &self,
        q: &mut CudaBuf<f32>,
        k: &mut CudaBuf<f32>,
        positions: &CudaBuf<i32>,
        inv_freq: &CudaBuf<f32>,
        head_dim: usize,
    ) -> Result<()> {
        dense::rope(self, q, Some(k), positions, inv_freq, head_dim)
    }

    fn add_rms_norm<W: Half>(
        &self,
        x: &mut CudaBuf<f32>,
        y: &CudaBuf<f32>,
        weight: &CudaBuf<W>,
        eps: f32,
        out: &mut CudaBuf<f32>,
    ) -> Result<()> {
        dense::add_rms_norm(self, x, y, weight, eps, out)
    }

    fn silu_mul(
        &self,
        gate: &CudaBuf<f32>,
        up: &CudaBuf<f32>,
        out: &mut CudaBuf<f32>,
    ) -> Result<()> {
        dense::silu_mul(self, gate, up, out)
    }

    fn add_assign(&self, x: &mut CudaBuf<f32>, y: &CudaBuf<f32>) -> Result<()> {
        dense::add_assign(self, x, y)
    }

    fn argmax(&self, logits: &CudaBuf<f32>, vocab: usize, out: &mut CudaBuf<u32>) -> Result<()> {
        sampling::argmax(self, logits, vocab, out)
    }

    fn sample(
        &self,
        logits: &CudaBuf<f32>,
        vocab: usize,
        params: SamplingParams,
        uniforms: &CudaBuf<f32>,
        out: &mut CudaBuf<u32>,
    ) -> Result<()> {
        sampling::sample(self, logits, vocab, params, uniforms, out)
    }

    fn append_kv<T: Half>(
        &self,
        kv: &mut CudaBuf<T>,
        layout: &PagedLayout,
        k: &CudaBuf<f32>,
        v: &CudaBuf<f32>,
        slots: &CudaBuf<i32>,
    ) -> Result<()> {
        paged::append_kv(self, kv, layout, k, v, slots)
    }

    fn update_bounds<T: Half>(
        &self,
        kv: &CudaBuf<T>,
        bounds: &mut CudaBuf<T>,
        layout: &PagedLayout,
        pages: &CudaBuf<i32>,
        page_lens: &CudaBuf<i32>,
    ) -> Result<()> {
        paged::update_bounds(self, kv, bounds, layout, pages, page_lens)
    }

    fn update_bounds_int8<T: Half>(
        &self,
        kv: &CudaBuf<T>,
        codes: &mut CudaBuf<u8>,
        params: &mut CudaBuf<f32>,
        layout: &PagedLayout,
        pages: &CudaBuf<i32>,
        page_lens: &CudaBuf<i32>,
    ) -> Result<()> {
        bounds_int8::update_bounds_int8(self, kv, codes, params, layout, pages, page_lens)
    }

    fn estimate_pages_int8(
        &self,
        q: &CudaBuf<f32>,
        codes: &CudaBuf<u8>,
        params: &CudaBuf<f32>,
        shape: &AttentionShape,
        table: &DevicePageTable<Self>,
        scores: &mut CudaBuf<f32>,
    ) -> Result<()> {
        bounds_int8::estimate_pages_int8(self, q, codes, params, shape, table, scores)
    }

    fn estimate_pages<T: Half>(
        &self,
        q: &CudaBuf<f32>,
        bounds: &CudaBuf<T>,
        shape: &AttentionShape,
        table: &DevicePageTable<Self>,
        scores: &mut CudaBuf<f32>,
    ) -> Result<()> {
        select::estimate_pages(self, q, bounds, shape, table, scores)
    }

    fn force_pages(
        &self,
        scores: &mut CudaBuf<f32>,
        num_qo_heads: usize,
        table: &DevicePageTable<Self>,
        first: usize,
        recent: usize,
    ) -> Result<()> {
        select::force_pages(self, scores, num_qo_heads, table, first, recent)
    }

    fn select_top_pages(
        &self,
        scores: &CudaBuf<f32>,
        shape: &AttentionShape,
        table: &DevicePageTable<Self>,
        opts: SelectOptions,
        out: &mut DevicePageTable<Self>,
        kept: Option<&mut CudaBuf<u64>>,
    ) -> Result<()> {
        select::select_top_pages(self, scores, shape, table, opts, out, kept)
    }

    fn decode_attention<T: Half>(
        &self,
        q: &CudaBuf<f32>,
        kv: &CudaBuf<T>,
        shape: &AttentionShape,
        table: &DevicePageTable<Self>,
        rows: TableRows,
        out: &mut CudaBuf<f32>,
    ) -> Result<()> {
        attention::decode_attention(self, q, kv, shape, table, rows, out)
    }

    fn prefill_attention<T: Half>(
        &self,
        q: &CudaBuf<f32>,
        kv: &CudaBuf<T>,
        shape: &AttentionShape,
        table: &DevicePageTable<Self>,
        qo_indptr: &[i32],
        out: &mut CudaBuf<f32>,
    ) -> Result<()> {
        attention::prefill_attention(self, q, kv, shape, table, qo_indptr, out)
    }
}
