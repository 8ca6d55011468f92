//! Ticketing webhooks: deliveries from ServiceNow, Jira and generic Standard Webhooks senders
//! that drive fleet actions (issue #13).

pub mod signature;
