//! The Kafka pipeline: consume, run the handler, write effects and dead letters, record the
//! outcome, commit — at least once, in partition order, never dropping a record.
//!
//! - [`consumer`]: one consumer loop per handler on its own thread (poll, dispatch, pause,
//!   commit, rebalance).
//! - [`worker`]: one task per assigned partition (the path of one record).
//! - `group`: the loop's partition table and its answers to the group (assign, revoke,
//!   commit).
//! - [`offsets`]: which position of a partition may be committed.
//! - `commit`: a batch's effects, in an order that never loses an output.
//! - [`record`]: a record's event, its ledger key, whether it is undecodable.
//!
//! What a dead letter carries, and reading dead letters back, is [`crate::dlq`]'s.
//!
//! [`Pipeline`] starts a loop per handler and stops them all on shutdown.

mod batch;
mod commit;
pub mod consumer;
mod group;
pub mod offsets;
pub mod record;
mod telemetry;
pub mod worker;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;

use crate::config::KafkaEnv;
use crate::handler::HandlerCtx;
use crate::telemetry::health::LoopState;

/// The running consumer loops.
#[derive(Debug)]
pub struct Pipeline {
    loops: Vec<(Arc<HandlerCtx>, std::thread::JoinHandle<()>)>,
    stop: Arc<AtomicBool>,
}

impl Pipeline {
    /// Start a consumer loop (thread) per handler.
    pub fn start(
        handlers: Vec<Arc<HandlerCtx>>,
        env: &KafkaEnv,
        passthrough: &[(String, String)],
        rt: tokio::runtime::Handle,
    ) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut loops = Vec::new();
        for ctx in handlers {
            ctx.health.register(&ctx.name);
            let cfg = crate::kafka::consumer_config(env, passthrough, &ctx.group_id);
            let (c, rt, stop2) = (ctx.clone(), rt.clone(), stop.clone());
            let thread = std::thread::Builder::new()
                .name(format!("kasm-consume-{}", ctx.name))
                .spawn(move || {
                    let name = c.name.clone();
                    if let Err(e) = consumer::run_loop(c.clone(), rt, cfg, stop2) {
                        tracing::error!(handler = %name, error = %format!("{e:#}"), "consumer loop failed");
                        c.health.set_state(&name, LoopState::Failed(format!("{e:#}")));
                    }
                })
                .with_context(|| format!("handler={}: starting the consumer thread", ctx.name))?;
            loops.push((ctx, thread));
        }
        Ok(Self { loops, stop })
    }

    /// The handlers' shared state (stats, component).
    pub fn handlers(&self) -> impl Iterator<Item = &Arc<HandlerCtx>> {
        self.loops.iter().map(|(c, _)| c)
    }

    /// Stop every loop: stop fetching, drain in flight within the drain timeout, commit,
    /// leave the group. Blocks until done (call it from a blocking context).
    pub fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        for (ctx, thread) in self.loops {
            if thread.join().is_err() {
                tracing::error!(handler = %ctx.name, "consumer loop thread panicked");
            }
        }
    }
}
