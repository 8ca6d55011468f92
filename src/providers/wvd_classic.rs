//! Windows Virtual Desktop classic (RDInfra broker) adapter.

use super::SessionProvider;
use std::sync::Arc;

/// Placeholder until the adapter lands.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
pub struct ClassicPoolConfig {}

pub fn build(_pool: &str, _cfg: &ClassicPoolConfig) -> Result<Arc<dyn SessionProvider>, String> {
    Err("provider not available in this build".into())
}
