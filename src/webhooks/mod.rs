//! Ticketing webhooks: deliveries from ServiceNow, Jira and generic Standard Webhooks senders
//! that drive fleet actions (issue #13). `config` reads `[webhooks]`, `verify` authenticates a
//! delivery's raw body, `mapping` turns its JSON into an action; the receiver route is
//! `crate::api::webhooks`, dedup and the write-back state live in `crate::service` (the
//! audit database's `webhook_deliveries` table).

pub mod config;
pub mod mapping;
pub mod sign;
pub mod signature;
pub mod verify;

pub use config::{Source, SourceKind, Sources, WebhooksConfig};
