//! Low-priority compile threads for loads that happen while records flow (deploys, rollbacks).
//!
//! Cranelift compiles a component's functions in parallel on rayon threads, so a deploy keeps
//! every core busy for a few hundred milliseconds. On a small machine that is exactly the
//! time the handlers' records wait for a core: the swap itself is an atomic pointer store, but
//! the compile before it showed up as a gap in the output (BENCHMARKS.md § Swap). A load run
//! here goes to a rayon pool of its own whose threads run at a higher nice value than the rest
//! of the process; wasmtime's parallel iterators called from inside the pool stay on it. The
//! kernel then gives the records' threads the core whenever they are runnable, and the compile
//! takes the time the records leave. The pool has half the cores (at least one), so a core is
//! left to the records whatever the scheduler does: at nice +10 on both cores of a 2-core VM,
//! deploys still opened gaps of 60–90 ms in the output now and then (a vCPU the hypervisor
//! takes away leaves its runnable threads waiting); with one compile thread none showed in the
//! same runs (BENCHMARKS.md § Hot swap). The price is a slower deploy, not a slower record.
//! Loads at startup keep the normal priority (nothing flows yet), on rayon's global pool.

use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Context;

/// How much nicer than the process the compile threads run (nice values: higher yields more):
/// as nice as the kernel allows. At +19 a runnable thread of the process gets ~98.5 % of a
/// contended core against one of these (at +10, ~90 %: an 18 MB interpreted component's
/// compile of 15–20 s still showed as gaps in the output); at full load a deploy still
/// finishes, only slower.
const NICER_BY: i32 = 19;

/// The highest nice value the kernel accepts.
const NICE_MAX: i32 = 19;

/// The pool, started on first use (a runtime that never deploys starts no threads).
#[derive(Debug, Default)]
pub(super) struct BackgroundPool {
    pool: Mutex<Option<Arc<rayon::ThreadPool>>>,
}

impl BackgroundPool {
    /// Run `job` on a low-priority thread; the answer arrives on the returned future.
    /// A panic in `job` is logged and surfaces as an error, as with `spawn_blocking`.
    pub(super) async fn run<T, F>(&self, job: F) -> anyhow::Result<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let pool = self.pool()?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        pool.spawn(move || {
            // The receiver is gone only if the caller stopped waiting; nothing to tell.
            let _ = tx.send(job());
        });
        rx.await
            .context("the background compile thread ended without an answer (it panicked)")
    }

    /// Run `job` on a low-priority thread without waiting for it. With no pool (the threads
    /// could not start), it runs here.
    pub(super) fn detach<F>(&self, job: F)
    where
        F: FnOnce() + Send + 'static,
    {
        match self.pool() {
            Ok(pool) => pool.spawn(job),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "no background compile thread; running the job here");
                job();
            }
        }
    }

    fn pool(&self) -> anyhow::Result<Arc<rayon::ThreadPool>> {
        let mut slot = self.pool.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(pool) = slot.as_ref() {
            return Ok(pool.clone());
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(compile_threads())
            .thread_name(|i| format!("kasm-compile-{i}"))
            .start_handler(|_| lower_this_threads_priority())
            .panic_handler(|panic| {
                let what = panic
                    .downcast_ref::<&str>()
                    .copied()
                    .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
                    .unwrap_or("(no message)");
                tracing::error!(panic = what, "a background compile panicked");
            })
            .build()
            .context("starting the background compile threads")?;
        let pool = Arc::new(pool);
        *slot = Some(pool.clone());
        Ok(pool)
    }
}

/// Half the cores, at least one: the other half stays free for the records whatever the
/// scheduler does with priorities.
fn compile_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

/// Raise the calling thread's nice value by [`NICER_BY`] (Linux keeps one per thread). An
/// unprivileged thread may always lower its own priority; a failure is logged and the thread
/// runs at the normal priority.
fn lower_this_threads_priority() {
    #[cfg(target_os = "linux")]
    {
        let tid = rustix::thread::gettid();
        let result = rustix::process::getpriority_process(Some(tid)).and_then(|now| {
            rustix::process::setpriority_process(Some(tid), (now + NICER_BY).min(NICE_MAX))
        });
        if let Err(e) = result {
            tracing::warn!(error = %e, "could not lower a compile thread's priority; it runs at the normal one");
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn own_nice() -> i32 {
        rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap()
    }

    #[tokio::test]
    async fn jobs_run_on_named_threads_nicer_than_the_caller() {
        let pool = BackgroundPool::default();
        let caller = own_nice();
        let (name, nice) = pool
            .run(|| (std::thread::current().name().map(str::to_owned), own_nice()))
            .await
            .unwrap();
        assert!(
            name.as_deref()
                .is_some_and(|n| n.starts_with("kasm-compile-")),
            "ran on {name:?}"
        );
        assert_eq!(nice, (caller + NICER_BY).min(NICE_MAX));
        // The caller's own priority is untouched.
        assert_eq!(own_nice(), caller);
    }

    #[tokio::test]
    async fn a_panicking_job_is_an_error_and_the_pool_keeps_serving() {
        let pool = BackgroundPool::default();
        let answer = pool
            .run(|| -> u32 { panic!("a compile that panics") })
            .await;
        let err = answer.unwrap_err();
        assert!(format!("{err:#}").contains("panicked"), "{err:#}");
        assert_eq!(pool.run(|| 7).await.unwrap(), 7);
    }

    #[tokio::test]
    async fn parallel_work_inside_a_job_stays_on_the_pool() {
        use rayon::prelude::*;
        let pool = BackgroundPool::default();
        let names = pool
            .run(|| {
                (0..64)
                    .into_par_iter()
                    .map(|_| std::thread::current().name().map(str::to_owned))
                    .collect::<Vec<_>>()
            })
            .await
            .unwrap();
        assert!(
            names
                .iter()
                .all(|n| n.as_deref().is_some_and(|n| n.starts_with("kasm-compile-"))),
            "{names:?}"
        );
    }
}
