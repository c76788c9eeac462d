//! The tenant scope of the current request, carried in a task-local so that the PostgreSQL
//! backend can hand it to row-level security (a second fence behind the resolvers' checks).
//!
//! The GraphQL handler runs each authenticated request inside [`scoped`] with the organisations
//! the verified principal belongs to; work outside a request (the agent gateway, the admin CLI,
//! token exchanges that are their own proof) runs as [`TenantScope::System`]. On PostgreSQL every
//! storage call is one transaction that sets `role = maosic_app` (not the table owner) and the
//! `maosic.*` settings the policies read; SQLite has no row-level security and ignores it.

use std::future::Future;

use super::ids::{LabId, OrganizationId, UserId};

/// Whose data the current task may touch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantScope {
    /// Platform work: no tenant restriction.
    System,
    /// A verified principal's request.
    Principal {
        /// The user.
        user_id: UserId,
        /// Organisations the principal may read.
        org_ids: Vec<OrganizationId>,
        /// Organisations where the principal is owner or admin.
        admin_org_ids: Vec<OrganizationId>,
        /// Labs of other organisations shared with `org_ids`.
        shared_lab_ids: Vec<LabId>,
    },
}

tokio::task_local! {
    static TENANT: TenantScope;
}

impl TenantScope {
    /// The scope of nobody: no organisation, no lab. What a task outside any scope gets.
    pub fn nobody() -> Self {
        TenantScope::Principal {
            user_id: UserId::default(),
            org_ids: Vec::new(),
            admin_org_ids: Vec::new(),
            shared_lab_ids: Vec::new(),
        }
    }
}

/// The scope of the running task. Fails closed: a task outside any scope is [`TenantScope::nobody`]
/// (no rows under row-level security), never the platform; platform work says so with [`system`].
pub fn current() -> TenantScope {
    TENANT.try_with(Clone::clone).unwrap_or_else(|_| {
        tracing::debug!("storage call outside any tenant scope: runs as nobody");
        TenantScope::nobody()
    })
}

/// Runs `f` in `scope`.
pub async fn scoped<F: Future>(scope: TenantScope, f: F) -> F::Output {
    TENANT.scope(scope, f).await
}

/// Runs the synchronous `f` in `scope` (to poll a stream inside a scope, one poll at a time).
pub fn sync_scoped<R>(scope: TenantScope, f: impl FnOnce() -> R) -> R {
    TENANT.sync_scope(scope, f)
}

/// Runs `f` as platform work, for operations whose proof is a secret token rather than a
/// tenant (enrollment, invitations, sign-up) or that create a new tenant.
pub async fn system<F: Future>(f: F) -> F::Output {
    TENANT.scope(TenantScope::System, f).await
}
