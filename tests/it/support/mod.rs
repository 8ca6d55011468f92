//! Set-up shared by the integration tests: the gateway in front of the demo emulators
//! ([`app`]), each emulator with an adapter config pointing at it ([`avd`], [`classic`],
//! [`winrm`]), a throw-away Kerberos realm ([`kdc`]), the audit store suite ([`audit`]) and the
//! gateway-level audit helpers ([`gateway`]).

pub mod app;
pub mod audit;
pub mod avd;
pub mod classic;
pub mod gateway;
pub mod kdc;
pub mod winrm;
