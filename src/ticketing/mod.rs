//! Ticketing: writing a job's result back to the ticket that asked for it (issue #13 part 5).
//!
//! [`WriteBackConfig`] says where (a ServiceNow table record's journal field, a Jira issue or
//! service-desk request comment, or a signed generic callback); [`WriteBack`] is the client
//! built from it once (credentials read by reference, HTTP client with the configured CA
//! bundle), and [`WriteBack::write_back`] sends one [`WriteBackReport`] for one [`TicketRef`]
//! through the shared upstream-call engine ([`crate::upstream`]: `Retry-After` honoured,
//! bounded retries within a budget, per-attempt timeout, capped answers).
//!
//! Outbound URLs come from this configuration only; a ticket reference only names a record
//! (number, sys_id or issue key, checked for their form) inside the configured system.

mod config;
mod render;
mod writeback;

pub use config::{
    CallbackWriteBack, JiraMode, JiraWriteBack, JournalField, ServiceNowAuth, ServiceNowWriteBack,
    WriteBackConfig,
};
pub use render::{report_adf, report_text};
pub use writeback::{WriteBack, WriteBackError, WriteBackErrorKind, WriteBackReceipt, write_back};

use serde::{Deserialize, Serialize};

/// Which ticket to write to. ServiceNow uses `sys_id`, or looks it up by `number`; Jira uses
/// `key` (or `number` when `key` is absent); the callback sends the whole reference.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sys_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// One item of a finished job, as written to the ticket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteBackItem {
    pub host: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// `succeeded`, `failed`, `refused`, `skipped`, ...
    pub outcome: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: time::OffsetDateTime,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
}

/// The result of a job, as written to the ticket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteBackReport {
    pub job_id: String,
    /// The action the job carried out (`logoff`, `disconnect`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// The job's final state (`succeeded`, `failed`, `partial`, ...).
    pub state: String,
    pub items: Vec<WriteBackItem>,
}
