//! The integration tests: one binary (`cargo nextest run --test it`, or a module with
//! `cargo nextest run --test it MODULE::`) that talks HTTP over loopback to the gateway and to
//! the in-tree emulators. Shared set-up lives in [`support`].

mod support;

mod api_auth;
mod api_avd;
mod api_classic;
mod api_edges;
mod api_lifecycle;
mod api_onprem;
mod api_retries;
mod api_spec;
mod audit_crash;
mod audit_postgres;
mod audit_sqlite;
mod audit_throughput;
mod auth_jwt;
mod auth_policy;
mod avd_emulator;
mod avd_official_sdk;
mod avd_provider;
mod avd_scale;
mod classic_emulator;
mod classic_measure;
mod classic_provider;
mod cli;
mod console_browser;
mod demo_webhooks;
mod deploy;
mod fleet;
mod fleet_idempotency;
mod fleet_jobs;
mod fleet_jobs_crash;
mod gateway_crash;
mod gateway_durability;
mod gateway_postgres;
mod gateway_store_down;
mod ops_docs;
mod ops_metrics;
mod otel;
mod pacing;
mod resilience_faults;
mod schemathesis;
mod ticket_emulators;
mod ticket_writeback;
mod tls;
mod webhooks;
mod webhooks_writeback;
mod winrm_bench;
mod winrm_cbt;
mod winrm_injection;
mod winrm_kerberos;
mod winrm_provider;
mod winrm_pywinrm;
