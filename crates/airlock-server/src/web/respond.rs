//! Where every console error becomes a response: the sign-in page for a
//! page view without a session, otherwise an error page with the status
//! the API would give the same error.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};

use super::pages::{self, Viewer};
use super::session::WebUser;
use crate::ApiError;

/// Why a console request was not served, turned into a response in one
/// place: the sign-in page for a page view without a session, otherwise an
/// error page with the status the API would use.
pub(super) enum Refusal {
    SignIn,
    Failed {
        /// Who was signed in (name, CSRF token), for the page frame.
        viewer: Option<(String, String)>,
        error: ApiError,
    },
}

pub(super) fn fail(user: Option<&WebUser>, error: ApiError) -> Refusal {
    Refusal::Failed {
        viewer: user.map(|u| (u.caller.user.to_string(), u.csrf.clone())),
        error,
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let (viewer, e) = match self {
            Refusal::SignIn => return Redirect::to("/login").into_response(),
            Refusal::Failed { viewer, error } => (viewer, error),
        };
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::error!(code = %e.code(), error = %e, "console request failed");
        }
        let v = viewer.as_ref().map(|(user, csrf)| Viewer {
            user,
            csrf,
            // An error page links only what everyone may open.
            auditor: false,
            breakglass: false,
        });
        let title = if status == StatusCode::NOT_FOUND {
            "Not found"
        } else {
            "Not done"
        };
        (status, pages::error(v.as_ref(), title, &e.to_string())).into_response()
    }
}
