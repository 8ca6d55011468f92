//! sessiongate: one audited REST API in front of remote-desktop session control on
//! Azure Virtual Desktop (ARM), WVD classic, RD Session Host and MultiPoint servers.

pub mod api;
pub mod app;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod config;
pub mod demo;
pub mod domain;
mod edge_io;
pub mod emulator;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod httpclient;
#[cfg(test)]
mod layer_check;
pub mod metrics;
pub mod providers;
pub mod run;
pub mod service;
pub mod telemetry;
pub mod ticketing;
pub mod tls;
pub mod upstream;
pub mod webhooks;
