//! Authentication: turning `Authorization: Bearer baton_<id>_<secret>` into a
//! live principal, minting tokens, and the first admin of an empty directory.
//! What a principal may then do is decided per call in `http::principal`
//! with the pure rules of `baton_core::auth`.
//!
//! A token is looked up by its public id, its secret compared with the stored
//! SHA-256 in constant time (`auth::token_matches`), and its principal must be
//! live. Verified tokens are kept in memory for at most `CACHE_TTL` (a
//! monotonic timer, not business time), so most calls cost no directory read;
//! every revocation through this server empties the cache at once, and one
//! made elsewhere (another process on the same database) takes effect within
//! `CACHE_TTL`. Failed lookups are never cached. Nothing here logs a token,
//! a secret or a hash: refusals name only the reason.

use baton_core::auth::{self, Directory, Principal, Role, TokenRecord};
use baton_core::{Error, Millis, Policies, StageName};
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How long a verified token is trusted without reading the directory again:
/// the longest a revocation made by another process takes to bite.
pub const CACHE_TTL: Duration = Duration::from_millis(500);

/// Verified tokens kept at once; past it the cache starts afresh.
pub const CACHE_ENTRIES_MAX: usize = 4_096;

/// The name of the admin principal `baton serve` creates in an empty directory.
pub const FIRST_ADMIN: &str = "admin";

/// Authentication for `AuthMode::Tokens`: the directory of principals and
/// tokens, the stage policies (which stages are human, for operators), and the
/// cache of verified tokens. Cheap to clone; clones share the cache.
#[derive(Clone)]
pub struct Auth {
    inner: Arc<Inner>,
}

struct Inner {
    directory: Arc<dyn Directory>,
    policies: Policies,
    cache: Mutex<HashMap<String, Verified>>,
    /// Counts revocations made through this server, so waiting claims wake
    /// and let the store refuse them at once.
    revocations: watch::Sender<u64>,
}

/// A token verified against the directory, and when.
struct Verified {
    record: TokenRecord,
    principal: Arc<Principal>,
    at: Instant,
}

/// Why a bearer token was not accepted. Each is answered 401
/// `unauthenticated`; the reason goes into the message and the refusal log,
/// and never any part of the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unauthenticated {
    Missing,
    /// Not `Bearer <token>`, or a token that is not `baton_<16 hex>_<64 hex>`.
    Malformed,
    /// No token has this id, or the secret does not match (not told apart).
    Unknown,
    Revoked,
    PrincipalRevoked,
}

impl Unauthenticated {
    pub fn message(self) -> &'static str {
        match self {
            Self::Missing => "send a token: Authorization: Bearer baton_...",
            Self::Malformed => "the Authorization header is not \"Bearer baton_<id>_<secret>\"",
            Self::Unknown => "the token is not valid",
            Self::Revoked => "the token is revoked",
            Self::PrincipalRevoked => "the token's principal is revoked",
        }
    }
}

impl fmt::Display for Unauthenticated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

/// Verifying a token failed: the caller is not authenticated, or the
/// directory could not be read.
#[derive(Debug, Clone, PartialEq)]
pub enum VerifyError {
    Refused(Unauthenticated),
    Store(Error),
}

impl Auth {
    pub fn new(directory: Arc<dyn Directory>, policies: Policies) -> Self {
        let inner = Inner {
            directory,
            policies,
            cache: Mutex::new(HashMap::new()),
            revocations: watch::Sender::new(0),
        };
        Self { inner: Arc::new(inner) }
    }

    pub fn directory(&self) -> &dyn Directory {
        &*self.inner.directory
    }

    /// Whether operators work `stage` (its policy says `human`).
    pub fn is_human(&self, stage: &StageName) -> bool {
        self.inner.policies.get(stage).human
    }

    /// The live principal a bearer token names.
    pub async fn verify(&self, token: &str) -> Result<Arc<Principal>, VerifyError> {
        let refused = |why| Err(VerifyError::Refused(why));
        let Some((id, secret)) = auth::parse_token(token) else { return refused(Unauthenticated::Malformed) };
        if let Some(principal) = self.cached(id, secret) {
            return Ok(principal);
        }
        let directory = self.directory();
        let Some(record) = directory.token(id).await.map_err(VerifyError::Store)? else {
            return refused(Unauthenticated::Unknown);
        };
        if record.revoked_at.is_some() {
            // Compare anyway, so a revoked id is not told apart by timing
            // from a wrong secret before saying which it is.
            let matches = auth::token_matches(&TokenRecord { revoked_at: None, ..record.clone() }, secret);
            return refused(if matches { Unauthenticated::Revoked } else { Unauthenticated::Unknown });
        }
        if !auth::token_matches(&record, secret) {
            return refused(Unauthenticated::Unknown);
        }
        let Some(principal) = directory.principal(&record.principal).await.map_err(VerifyError::Store)?
        else {
            // A token whose principal is missing: the directory refuses to
            // create one, so only a hand-edited database gets here.
            tracing::error!(token_id = %record.id, "a token names a principal that does not exist");
            return refused(Unauthenticated::Unknown);
        };
        if !principal.is_live() {
            return refused(Unauthenticated::PrincipalRevoked);
        }
        let principal = Arc::new(principal);
        self.remember(record, principal.clone());
        Ok(principal)
    }

    /// A cached, still fresh verification of this id whose secret matches.
    fn cached(&self, id: &str, secret: &str) -> Option<Arc<Principal>> {
        let cache = self.inner.cache.lock().unwrap_or_else(PoisonError::into_inner);
        let hit = cache.get(id)?;
        (hit.at.elapsed() < CACHE_TTL && auth::token_matches(&hit.record, secret))
            .then(|| hit.principal.clone())
    }

    fn remember(&self, record: TokenRecord, principal: Arc<Principal>) {
        let mut cache = self.inner.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= CACHE_ENTRIES_MAX {
            cache.clear();
        }
        cache.insert(record.id.clone(), Verified { record, principal, at: Instant::now() });
    }

    /// Forgets every verified token: called after each revocation, so it
    /// takes effect on the next call; and wakes every waiting claim, so a
    /// revoked caller's is refused now rather than when work arrives.
    pub fn forget(&self) {
        self.inner.cache.lock().unwrap_or_else(PoisonError::into_inner).clear();
        self.inner.revocations.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Changes with every revocation made through this server.
    pub fn revocations(&self) -> watch::Receiver<u64> {
        self.inner.revocations.subscribe()
    }
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth").finish_non_exhaustive()
    }
}

/// Two `Auth`s are equal when they are the same (clones of one another).
impl PartialEq for Auth {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

impl Eq for Auth {}

/// Mints a token for `principal` from the operating system's random source:
/// the text to show once, and the record to store.
pub fn mint(principal: &str, now: Millis) -> Result<(String, TokenRecord), getrandom::Error> {
    let mut id = [0u8; 8];
    let mut secret = [0u8; 32];
    getrandom::fill(&mut id)?;
    getrandom::fill(&mut secret)?;
    Ok(auth::mint_token(principal, id, secret, now))
}

/// On a directory with no principal at all, creates the admin principal
/// `FIRST_ADMIN` and a token for it, and returns the token's text (to show
/// once). On any other directory, does nothing and returns `None`.
pub async fn bootstrap_admin(
    directory: &dyn Directory,
    now: Millis,
) -> Result<Option<String>, BootstrapError> {
    if !directory.principals().await?.is_empty() {
        return Ok(None);
    }
    let admin = Principal {
        name: FIRST_ADMIN.to_owned(),
        role: Role::Admin,
        stages: vec![StageName::new("*")],
        routes: Vec::new(),
        created_at: now,
        revoked_at: None,
    };
    let (text, record) = mint(FIRST_ADMIN, now).map_err(|e| BootstrapError::Random(e.to_string()))?;
    directory.add_principal(admin).await?;
    directory.add_token(record).await?;
    Ok(Some(text))
}

/// Why the first admin could not be created.
#[derive(Debug, Clone, PartialEq)]
pub enum BootstrapError {
    Store(Error),
    Random(String),
}

impl From<Error> for BootstrapError {
    fn from(e: Error) -> Self {
        Self::Store(e)
    }
}

impl fmt::Display for BootstrapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Store(e) => write!(f, "{e}"),
            Self::Random(e) => write!(f, "the operating system's random source failed: {e}"),
        }
    }
}

impl std::error::Error for BootstrapError {}
