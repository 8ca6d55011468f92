//! In-tree emulators of the backends sessiongate speaks to, faithful to their wire contracts
//! (see `shared/reference/`). They power the tests, `demo` and the benchmarks.

pub mod arm;
pub mod common;
pub mod jira;
pub mod oidc;
pub mod servicenow;
pub mod winrm;
pub mod wvd_classic;
