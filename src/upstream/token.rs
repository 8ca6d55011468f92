//! Bearer tokens for upstream calls: the [`TokenSource`] the engine asks before each attempt
//! and tells to start afresh when the service answers 401.

use super::UpstreamError;
use async_trait::async_trait;
use azure_core::credentials::TokenCredential;
use std::{
    sync::{Arc, RwLock},
    time::Duration,
};

/// Where an upstream client's bearer tokens come from.
#[async_trait]
pub trait TokenSource: Send + Sync {
    /// A token (cached or new).
    async fn token(&self) -> Result<String, UpstreamError>;
    /// Forgets cached tokens, so the next [`TokenSource::token`] fetches a new one.
    fn refresh(&self) -> Result<(), UpstreamError>;
}

/// Builds a fresh `azure_core` credential (reading secrets again, so a rotated secret file
/// is picked up), with an empty token cache.
pub type CredentialFactory =
    Box<dyn Fn() -> Result<Arc<dyn TokenCredential>, String> + Send + Sync>;

/// Tokens for one scope from an `azure_identity` credential. `refresh` replaces the credential
/// (and with it the token cache) by a freshly built one.
pub struct CredentialToken {
    scope: String,
    timeout: Duration,
    current: RwLock<Arc<dyn TokenCredential>>,
    factory: CredentialFactory,
}

impl std::fmt::Debug for CredentialToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialToken")
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl CredentialToken {
    /// Starts with `first` (built by the caller, so configuration errors surface at start-up
    /// in the caller's terms); `factory` builds its replacements. `timeout` bounds one token
    /// acquisition (discovery and token round trips included).
    pub fn new(
        scope: String,
        timeout: Duration,
        first: Arc<dyn TokenCredential>,
        factory: CredentialFactory,
    ) -> Self {
        Self {
            scope,
            timeout,
            current: RwLock::new(first),
            factory,
        }
    }
}

#[async_trait]
impl TokenSource for CredentialToken {
    async fn token(&self) -> Result<String, UpstreamError> {
        let credential = self
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let scopes = [self.scope.as_str()];
        let Ok(res) = tokio::time::timeout(self.timeout, credential.get_token(&scopes, None)).await
        else {
            return Err(UpstreamError::Timeout(format!(
                "no token for {} within {:?}",
                self.scope, self.timeout
            )));
        };
        match res {
            Ok(t) => Ok(t.token.secret().to_string()),
            Err(e) => {
                let msg = crate::domain::truncate_for_display(&e.to_string(), 600);
                if matches!(e.kind(), azure_core::error::ErrorKind::Io) {
                    Err(UpstreamError::Transport(format!("token endpoint: {msg}")))
                } else {
                    Err(UpstreamError::Auth(format!(
                        "acquiring a token for {}: {msg}",
                        self.scope
                    )))
                }
            }
        }
    }

    fn refresh(&self) -> Result<(), UpstreamError> {
        let fresh = (self.factory)().map_err(UpstreamError::Auth)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(())
    }
}
