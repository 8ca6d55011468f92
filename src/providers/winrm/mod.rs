//! On-premises RD Session Host and MultiPoint over WinRM.

use super::SessionProvider;
use std::sync::Arc;

/// Placeholder until the adapter lands.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
pub struct OnPremPoolConfig {}

pub fn build_rds(_pool: &str, _cfg: &OnPremPoolConfig) -> Result<Arc<dyn SessionProvider>, String> {
    Err("provider not available in this build".into())
}
pub fn build_multipoint(
    _pool: &str,
    _cfg: &OnPremPoolConfig,
) -> Result<Arc<dyn SessionProvider>, String> {
    Err("provider not available in this build".into())
}
