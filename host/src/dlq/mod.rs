//! Dead letters: what one carries, and reading them back.
//!
//! A record the pipeline gives up on goes to its handler's dead-letter topic with the
//! original key, payload and headers, so that it can be replayed as it was. This module owns
//! every header name that says where a dead letter came from and whether it is a replay.
//!
//! The headers (all UTF-8 text):
//!
//! | header | value |
//! |---|---|
//! | `kasm-dlq-source-topic` / `-source-partition` / `-source-offset` | where the record was |
//! | `kasm-dlq-source-timestamp` | the record's timestamp, ms since the Unix epoch (absent if none) |
//! | `kasm-dlq-handler` / `kasm-dlq-group` | who failed it |
//! | `kasm-dlq-component` | sha256 of the component version that ran |
//! | `kasm-dlq-attempts` | how many times the handler ran (0 for `undecodable`) |
//! | `kasm-dlq-error-kind` | `retries-exhausted`, `fatal`, `trap`, `timeout`, `out-of-memory`, `undecodable` |
//! | `kasm-dlq-error-message` | the reason (at most 8 KiB) |
//! | `kasm-dlq-first-failure` / `kasm-dlq-last-failure` | ms since the Unix epoch |
//! | `kasm-dlq-event-id` | the event id kasm identified the record by |
//! | `kasm-replay-count` | how many times a record was replayed from a dead-letter topic |
//! | `kasm-replay-id` | one replay (unique per replayed record): its ledger key |
//! | `kasm-replay-handler` | the handler a replay is for (the one that dead-lettered it) |
//!
//! - [`letter`]: the headers of a new dead letter (the pipeline's worker writes them).
//! - [`decode`]: a dead letter read back, decoded for a listing.
//! - [`list`]: a page of a dead-letter topic, with a cursor to the next.
//! - [`replay`]: dead letters written back to the topic they came from.
//! - `reader`: a group-less reader of a topic up to its end as of the call, which listing and
//!   replaying share.
//!
//! One header rule holds for every reader of these headers: when a name occurs more than once,
//! the last one counts ([`last_header`]).

pub mod decode;
pub mod letter;
pub mod list;
mod reader;
pub mod replay;

/// The prefix of the headers a dead letter adds.
pub const DLQ_HEADER_PREFIX: &str = "kasm-dlq-";

/// How many times a record was replayed from a dead-letter topic (absent: never).
pub const REPLAY_COUNT_HEADER: &str = "kasm-replay-count";

/// Header naming one replay (unique per replayed record).
pub const REPLAY_ID_HEADER: &str = "kasm-replay-id";

/// Header naming the handler a replay is for: the one that dead-lettered the record. Other
/// handlers consuming the same topic already handled the original and skip it.
pub const REPLAY_HANDLER_HEADER: &str = "kasm-replay-handler";

/// The value of the last header named `key` (the rule for every header, `kasm-*` included).
pub use crate::event::last_header;
