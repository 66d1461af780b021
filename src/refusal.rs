//! One row per refusal: its HTTP status, the `code` its JSON body carries, the `outcome` label it
//! counts under in `keygate_requests_total`, and the `reason` the access log gives. `respond`,
//! `observe` and the metrics read these from here, so the four can never drift apart.

use crate::gate::Rejection;
use crate::metrics::Outcome;

/// How one kind of refusal is answered and recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    /// The body's `code`.
    pub code: &'static str,
    pub outcome: Outcome,
    /// The access log's `reason`: the code, or for a credential or limit the finer cause.
    pub reason: &'static str,
}

impl Rejection {
    pub fn refusal(&self) -> Refusal {
        use Outcome::*;
        let (status, code, outcome, reason) = match self {
            Rejection::NoSnapshot => (503, "no_snapshot", Unavailable, "no_snapshot"),
            Rejection::BadPath(_) => (400, "invalid_path", BadRequest, "invalid_path"),
            Rejection::NoRoute => (404, "no_route", NotFound, "no_route"),
            Rejection::MissingCredentials => (401, "missing_credentials", Unauthorized, "missing"),
            Rejection::InvalidCredentials(f) => {
                (401, "invalid_credentials", Unauthorized, f.as_str())
            }
            Rejection::InsufficientScope(_) => {
                (403, "insufficient_scope", Forbidden, "insufficient_scope")
            }
            Rejection::WorkspaceRequired => {
                (400, "workspace_required", BadRequest, "workspace_required")
            }
            Rejection::KeyRestricted(kind) => (403, "key_restricted", Forbidden, kind.reason()),
            Rejection::TooManyFailures { .. } => {
                (429, "too_many_failures", RateLimited, "too_many_failures")
            }
            Rejection::UnknownWorkspace => {
                (403, "unknown_workspace", Forbidden, "unknown_workspace")
            }
            Rejection::RateLimited { limit, .. } => {
                (429, "rate_limited", RateLimited, limit.as_str())
            }
            Rejection::ConcurrencyLimited { .. } => (
                429,
                "concurrency_limited",
                RateLimited,
                "concurrency_limited",
            ),
            Rejection::LimitsUnavailable => {
                (429, "limits_unavailable", RateLimited, "limits_unavailable")
            }
        };
        Refusal {
            status,
            code,
            outcome,
            reason,
        }
    }
}
