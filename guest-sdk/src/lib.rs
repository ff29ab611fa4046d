//! Write kasm handlers in Rust: a plain function plus one macro line.
//!
//! kasm consumes Kafka and runs each record through a handler, a WebAssembly component built
//! for `wasm32-wasip2` that implements the `kasm:handler` world (see `wit/` in the kasm
//! repository). This crate hides the generated bindings behind a small API:
//!
//! ```no_run
//! use kasm_guest::{Event, HandlerError};
//!
//! #[derive(serde::Deserialize)]
//! struct Order {
//!     order_id: String,
//! }
//!
//! fn handle(event: Event) -> Result<(), HandlerError> {
//!     let order: Order = event.json()?;
//!     kasm_guest::log::info(&format!("order {} received", order.order_id));
//!     kasm_guest::publish("orders-seen", event.key(), event.payload(), &[])?;
//!     Ok(())
//! }
//!
//! kasm_guest::handler!(handle);
//! ```
//!
//! - [`Event`] is the record the host hands over, with accessors for everything the host knows
//!   about it and [`Event::json`] to decode its payload.
//! - [`HandlerError`] tells the host what to do with a failed record: [`HandlerError::retryable`]
//!   (retry with backoff, then dead-letter) or [`HandlerError::fatal`] (dead-letter at once).
//! - [`publish`], [`publish_json`], [`next_event_id`], [`kv`], [`sql`], [`websocket`],
//!   [`http`], [`settings`] and [`log`] call the host capabilities. Publishes and SQL writes are effects of the call: the host sends the
//!   publishes and commits the SQL transaction only after the handler returns `Ok`.
//! - [`taskapp`] holds the event types shared by the task-app handlers.
//!
//! The capability functions only work inside a component: called from a native build (a
//! `cargo test` on the host), they panic. Keep business logic in pure functions and test those
//! natively; [`Event::new`] and its `with_*` methods build events for such tests.
#![deny(missing_docs)]

/// The bindings generator, re-exported so that handler crates need no direct dependency on it
/// (the code that [`handler!`] expands to refers to it through this path).
pub use wit_bindgen;

// The generated bindings name this crate by its absolute path (`runtime_path`,
// `default_bindings_module`), which must also resolve inside the crate itself.
extern crate self as kasm_guest;

mod error;
mod event;
pub mod http;
pub mod kv;
pub mod log;
mod producer;
pub mod settings;
pub mod sql;
pub mod taskapp;
pub mod websocket;

pub use error::HandlerError;
pub use event::Event;
pub use producer::{next_event_id, publish, publish_json};

/// The raw bindings generated from the WIT contract. Not part of the API: use [`Event`],
/// [`HandlerError`] and the capability functions instead.
#[doc(hidden)]
#[allow(
    unsafe_code,
    missing_docs,
    missing_debug_implementations,
    clippy::too_many_arguments
)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "handler",
        pub_export_macro: true,
        export_macro_name: "__export_handler",
        default_bindings_module: "kasm_guest::bindings",
        runtime_path: "kasm_guest::wit_bindgen::rt",
        additional_derives: [PartialEq],
    });
}

/// Turn a function into the component's `handle` export.
///
/// The function must have the signature `fn(Event) -> Result<(), HandlerError>`. Use the macro
/// once per crate, at module level:
///
/// ```no_run
/// use kasm_guest::{Event, HandlerError};
///
/// fn handle(event: Event) -> Result<(), HandlerError> {
///     kasm_guest::log::info(&format!("got {}", event.id()));
///     Ok(())
/// }
///
/// kasm_guest::handler!(handle);
/// ```
#[macro_export]
macro_rules! handler {
    ($handler:path) => {
        const _: () = {
            struct KasmHandler;

            impl $crate::__private::Guest for KasmHandler {
                fn handle(
                    event: $crate::__private::RawEvent,
                ) -> ::core::result::Result<(), $crate::__private::RawHandlerError> {
                    $crate::__private::run($handler, event)
                }
            }

            $crate::bindings::__export_handler! {
                KasmHandler with_types_in $crate::bindings
            }
        };
    };
}

/// What [`handler!`] expands to refers to. Not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use crate::bindings::Guest;
    pub use crate::bindings::kasm::handler::types::{
        Event as RawEvent, HandlerError as RawHandlerError,
    };

    use crate::{Event, HandlerError};

    /// Call the author's function with the wrapped event and lower its error.
    pub fn run<F>(handler: F, event: RawEvent) -> Result<(), RawHandlerError>
    where
        F: FnOnce(Event) -> Result<(), HandlerError>,
    {
        handler(Event::from(event)).map_err(RawHandlerError::from)
    }
}
