//! Authorisation decisions: scope checks (404 versus 403) and protected sessions.
//!
//! # 404 or 403
//! [`Principal::check`] with `hide_pool = true` answers `not_found = true` (render it as
//! **404 `pool_not_found`**) when the caller holds *no grant of any role* covering the pool:
//! pools outside a caller's scope are indistinguishable from pools that do not exist, so a
//! caller scoped to `hp-finance` cannot probe for the names of other pools. A caller holding
//! some grant on the pool but lacking the permission gets `not_found = false` (render it as
//! **403 `forbidden`**, naming [`Denied::missing`]): it can already see the pool, so saying
//! what is missing leaks nothing and helps. With `hide_pool = false` the answer is always 403.

use super::config::ProtectedConfig;
use super::{Permission, Principal};
use crate::domain::PoolName;

/// Why [`Principal::check`] refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} on pool '{pool}' is required", missing.as_str())]
pub struct Denied {
    /// The permission the caller lacks.
    pub missing: Permission,
    /// The pool the request targeted.
    pub pool: PoolName,
    /// `true`: answer 404 `pool_not_found` (the caller may not learn the pool exists);
    /// `false`: answer 403 `forbidden`.
    pub not_found: bool,
}

impl Principal {
    /// Whether `perm` is granted on `pool`; see the module docs for the 404/403 choice.
    pub fn check(&self, perm: Permission, pool: &PoolName, hide_pool: bool) -> Result<(), Denied> {
        if self.has(perm, Some(pool)) {
            return Ok(());
        }
        let sees_pool = self.grants.iter().any(|g| g.pools.covers(pool));
        Err(Denied {
            missing: perm,
            pool: pool.clone(),
            not_found: hide_pool && !sees_pool,
        })
    }

    /// Whether the caller holds any grant covering `pool` (filter pool listings with it, so
    /// they agree with the 404 answers of [`Principal::check`]).
    pub fn sees_pool(&self, pool: &PoolName) -> bool {
        self.grants.iter().any(|g| g.pools.covers(pool))
    }
}

/// How a session's user is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protection {
    /// Anyone with the action permission may act.
    None,
    /// Only an admin (`sessions.admin`) may act, typically with `force`.
    Protected,
    /// A service account: nobody may act through sessiongate.
    ServiceAccount,
}

/// A compiled user pattern.
#[derive(Debug, Clone)]
struct Pattern {
    kind: PatternKind,
    /// Lower-cased pattern text (for `Bare`, the account name).
    text: String,
    /// For `DownLevel`: the account part after the backslash.
    account: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PatternKind {
    /// `local@domain`: matched against the UPN.
    Upn,
    /// `DOMAIN\user`: matched against the down-level name.
    DownLevel,
    /// `user`: matched against the account part of either form, in any domain.
    Bare,
}

/// Checks a user pattern's syntax.
pub(crate) fn validate_pattern(p: &str) -> Result<(), String> {
    let t = p.trim();
    if t.is_empty() {
        return Err("must not be empty".into());
    }
    if t.contains('@') && t.contains('\\') {
        return Err(format!(
            "'{p}' mixes '@' and '\\\\': use either user@domain or DOMAIN\\\\user"
        ));
    }
    if t.matches('\\').count() > 1 || t.matches('@').count() > 1 {
        return Err(format!("'{p}' has more than one separator"));
    }
    Ok(())
}

impl Pattern {
    fn new(p: &str) -> Result<Self, String> {
        validate_pattern(p)?;
        let text = p.trim().to_lowercase();
        if let Some((_, acct)) = text.split_once('\\') {
            Ok(Self {
                kind: PatternKind::DownLevel,
                account: acct.to_string(),
                text,
            })
        } else if text.contains('@') {
            Ok(Self {
                kind: PatternKind::Upn,
                account: String::new(),
                text,
            })
        } else {
            Ok(Self {
                kind: PatternKind::Bare,
                account: text.clone(),
                text,
            })
        }
    }

    fn matches(&self, upn: Option<&str>, ad_user: Option<&str>) -> bool {
        let upn = upn
            .map(|s| s.trim().to_lowercase())
            .filter(|s| !s.is_empty());
        let ad = ad_user
            .map(|s| s.trim().to_lowercase())
            .filter(|s| !s.is_empty());
        match self.kind {
            PatternKind::Upn => upn.is_some_and(|u| wildcard(&self.text, &u)),
            PatternKind::DownLevel => ad.is_some_and(|a| match a.split_once('\\') {
                Some(_) => wildcard(&self.text, &a),
                // The backend gave no domain: match on the account alone (fail safe: protect).
                None => wildcard(&self.account, &a),
            }),
            PatternKind::Bare => {
                let upn_local = upn
                    .as_deref()
                    .map(|u| u.split_once('@').map_or(u, |(l, _)| l).to_string());
                let ad_acct = ad
                    .as_deref()
                    .map(|a| a.rsplit_once('\\').map_or(a, |(_, u)| u).to_string());
                upn_local.is_some_and(|l| wildcard(&self.account, &l))
                    || ad_acct.is_some_and(|a| wildcard(&self.account, &a))
            }
        }
    }
}

/// Glob match with `*` (any run, possibly empty) and `?` (one character). Iterative with
/// backtracking to the last star: linear-ish, no recursion, no regex.
fn wildcard(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Which session users are protected (admin only) or service accounts (nobody).
///
/// Group membership of a *session user* cannot be resolved from the backends (ARM, the WVD
/// broker and `quser`/WinRM report a user name, not its groups), so `groups` only apply where
/// the caller passes groups to [`ProtectedSessions::classify_with_groups`] because a provider
/// reported them; with [`ProtectedSessions::classify`] only user patterns count.
#[derive(Debug, Clone, Default)]
pub struct ProtectedSessions {
    users: Vec<Pattern>,
    groups: Vec<String>,
    service_accounts: Vec<Pattern>,
}

impl ProtectedSessions {
    /// Compiles `[auth.protected]` and `auth.service_accounts`; errors name the key.
    pub fn new(
        cfg: &ProtectedConfig,
        service_accounts: &[String],
    ) -> Result<Self, crate::config::ConfigError> {
        let auth = crate::config::Key::root("auth");
        let users = cfg
            .users
            .iter()
            .enumerate()
            .map(|(i, p)| {
                Pattern::new(p).map_err(|e| auth.field("protected").field("users").index(i).err(e))
            })
            .collect::<Result<_, _>>()?;
        let service_accounts = service_accounts
            .iter()
            .enumerate()
            .map(|(i, p)| {
                Pattern::new(p).map_err(|e| auth.field("service_accounts").index(i).err(e))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            users,
            groups: cfg.groups.iter().map(|g| g.trim().to_lowercase()).collect(),
            service_accounts,
        })
    }

    /// Classifies a session's user by UPN and/or down-level name (`DOMAIN\user` or `user`).
    /// Service accounts win over protected users. A session with no user is not protected.
    pub fn classify(&self, user_upn: Option<&str>, ad_user: Option<&str>) -> Protection {
        self.classify_with_groups(user_upn, ad_user, &[])
    }

    /// As [`ProtectedSessions::classify`], also matching `auth.protected.groups` against the
    /// groups a provider reported for the session user (case-insensitive, exact).
    pub fn classify_with_groups(
        &self,
        user_upn: Option<&str>,
        ad_user: Option<&str>,
        groups: &[&str],
    ) -> Protection {
        if self
            .service_accounts
            .iter()
            .any(|p| p.matches(user_upn, ad_user))
        {
            return Protection::ServiceAccount;
        }
        if self.users.iter().any(|p| p.matches(user_upn, ad_user))
            || groups
                .iter()
                .any(|g| self.groups.contains(&g.trim().to_lowercase()))
        {
            return Protection::Protected;
        }
        Protection::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_basics() {
        assert!(wildcard("adm-*@contoso.com", "adm-jane@contoso.com"));
        assert!(wildcard("*", ""));
        assert!(wildcard("a*b*c", "axxbyyc"));
        assert!(!wildcard("a*b*c", "axxbyy"));
        assert!(wildcard("a?c", "abc"));
        assert!(!wildcard("abc", "abcd"));
        assert!(wildcard("*x", "xxxxx"));
    }

    #[test]
    fn patterns_by_kind() {
        let p = ProtectedSessions::new(
            &ProtectedConfig {
                users: vec![
                    "adm-*@contoso.com".into(),
                    "*\\Administrator".into(),
                    "breakglass".into(),
                ],
                groups: vec!["Tier0".into()],
            },
            &["svc-*@contoso.com".into(), "CONTOSO\\svc_backup".into()],
        )
        .unwrap();
        use Protection as P;
        let c = |u: Option<&str>, a: Option<&str>| p.classify(u, a);
        assert_eq!(c(Some("ADM-Jane@Contoso.com"), None), P::Protected);
        assert_eq!(c(Some("jane@contoso.com"), None), P::None);
        assert_eq!(c(None, Some("FABRIKAM\\administrator")), P::Protected);
        assert_eq!(c(None, Some("Administrator")), P::Protected);
        assert_eq!(c(None, Some("CONTOSO\\jane")), P::None);
        assert_eq!(c(Some("breakglass@x.org"), None), P::Protected);
        assert_eq!(c(None, Some("X\\BreakGlass")), P::Protected);
        assert_eq!(c(Some("svc-sql@contoso.com"), None), P::ServiceAccount);
        assert_eq!(c(None, Some("contoso\\SVC_BACKUP")), P::ServiceAccount);
        assert_eq!(c(None, Some("fabrikam\\svc_backup")), P::None);
        assert_eq!(c(None, None), P::None);
        assert_eq!(
            p.classify_with_groups(Some("jane@contoso.com"), None, &["tier0"]),
            P::Protected
        );
    }

    #[test]
    fn bad_patterns_name_the_key() {
        let e = ProtectedSessions::new(
            &ProtectedConfig {
                users: vec!["a@b\\c".into()],
                groups: vec![],
            },
            &[],
        )
        .unwrap_err();
        assert_eq!(e.key, "auth.protected.users[0]", "{e}");
    }
}
