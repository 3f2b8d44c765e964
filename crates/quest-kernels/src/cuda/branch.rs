//! The backend's branch (`Backend::branch_begin` / `branch_end` / `branch_join`): a second,
//! non-blocking stream that ops go to while a branch is open, and the two events that order it
//! against the main stream. One branch at a time, owned by the backend.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use cudarc::driver::{CudaContext, CudaEvent, CudaStream};

use super::cuda_err;
use crate::error::{Result, arg_err};

pub(super) struct Branch {
    side: Arc<CudaStream>,
    /// Whether ops go to `side` now (between `begin` and `end`).
    open: AtomicBool,
    fork: CudaEvent,
    join: CudaEvent,
    /// `QUEST_BRANCH=0`: the branch ops do nothing and everything stays on the main stream, in
    /// the order it was queued (for A/B measurements).
    enabled: bool,
}

impl Branch {
    pub(super) fn new(ctx: &Arc<CudaContext>) -> Result<Self> {
        Ok(Branch {
            side: ctx.new_stream().map_err(|e| cuda_err("new", e))?,
            open: AtomicBool::new(false),
            fork: ctx.new_event(None).map_err(|e| cuda_err("new", e))?,
            join: ctx.new_event(None).map_err(|e| cuda_err("new", e))?,
            enabled: std::env::var("QUEST_BRANCH").map_or(true, |v| v != "0"),
        })
    }

    fn is_open(&self) -> bool {
        self.open.load(Ordering::Relaxed)
    }

    /// The stream ops go to now: `main`, or the branch's while it is open.
    pub(super) fn queue<'a>(&'a self, main: &'a Arc<CudaStream>) -> &'a Arc<CudaStream> {
        if self.is_open() { &self.side } else { main }
    }

    /// While the branch is open, makes it wait for what `main` has queued (an allocation or
    /// upload, which always go to the main stream so their memory is freed in its order).
    pub(super) fn order_after_main(&self, main: &CudaStream, op: &'static str) -> Result<()> {
        if self.is_open() {
            self.fork.record(main).map_err(|e| cuda_err(op, e))?;
            self.side.wait(&self.fork).map_err(|e| cuda_err(op, e))?;
        }
        Ok(())
    }

    /// `Backend::branch_begin`: the branch waits for everything queued on `main` so far; only
    /// then do ops go to it.
    pub(super) fn begin(&self, main: &CudaStream) -> Result<()> {
        const OP: &str = "branch_begin";
        if !self.enabled {
            return Ok(());
        }
        if self.is_open() {
            return Err(arg_err(OP, "a branch is already open"));
        }
        self.fork.record(main).map_err(|e| cuda_err(OP, e))?;
        self.side.wait(&self.fork).map_err(|e| cuda_err(OP, e))?;
        self.open.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// `Backend::branch_end`: back to the main stream even if the record fails (the join then
    /// waits for nothing newer, and the error says why).
    pub(super) fn end(&self) -> Result<()> {
        if !self.enabled {
            return Ok(());
        }
        if !self.is_open() {
            return Err(arg_err("branch_end", "no branch is open"));
        }
        self.open.store(false, Ordering::Relaxed);
        self.join
            .record(&self.side)
            .map_err(|e| cuda_err("branch_end", e))
    }

    /// `Backend::branch_join`: `main` waits for the closed branch.
    pub(super) fn join(&self, main: &CudaStream) -> Result<()> {
        if !self.enabled {
            return Ok(());
        }
        if self.is_open() {
            return Err(arg_err(
                "branch_join",
                "the branch is still open (branch_end first)",
            ));
        }
        main.wait(&self.join)
            .map_err(|e| cuda_err("branch_join", e))
    }

    /// Waits for everything queued on the branch's stream.
    pub(super) fn synchronize(&self) -> Result<()> {
        self.side
            .synchronize()
            .map_err(|e| cuda_err("synchronize", e))
    }
}
