//! The editors' changes, each through the CLI's own function (one
//! transaction, one audit event per change, the account as its actor),
//! then back to the case page (303, so a reload does not post again).

use std::sync::Arc;

use axum::Form;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::session::Signed;
use super::{Board, Failure, reference};
use crate::case::{self, DateSetting, Reference, Status, UserNotice};
use crate::casework::{self, Changes};
use crate::triage::RequestKind;

fn back(reference: Reference) -> Response {
    Redirect::to(&format!("/cases/{reference}")).into_response()
}

/// The checks of every change: the form is this session's, the account an
/// editor's.
fn allowed(signed: &Signed, csrf: &str) -> Result<(), Failure> {
    signed.check_csrf(csrf)?;
    signed.check_editor()
}

#[derive(Deserialize)]
pub struct StatusForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    note: String,
}

/// `POST /cases/{reference}/status`.
pub async fn status(
    State(board): State<Arc<Board>>,
    signed: Signed,
    Path(id): Path<String>,
    Form(form): Form<StatusForm>,
) -> Result<Response, Failure> {
    allowed(&signed, &form.csrf)?;
    let reference = reference(&id)?;
    let to: Status = form.status.parse().map_err(Failure::BadRequest)?;
    let note = Some(form.note.trim().to_string()).filter(|n| !n.is_empty());
    let (actor, clock) = (signed.actor(), board.clock);
    let line = board
        .store
        .run(move |s| casework::set_status(s, reference, to, note.as_deref(), &actor, clock))
        .await?;
    tracing::info!("case board: {line}");
    Ok(back(reference))
}

#[derive(Deserialize)]
pub struct FieldsForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    deadline: String,
    #[serde(default)]
    hard_copy_served: String,
    #[serde(default)]
    user_notice: String,
    #[serde(default)]
    until: String,
    #[serde(default)]
    user_notified: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    emergency: String,
    #[serde(default)]
    outcome: String,
    #[serde(default)]
    note: String,
}

/// An empty field is left as it is; `none` clears a date.
fn date(v: &str) -> Result<Option<DateSetting>, Failure> {
    let v = v.trim();
    if v.is_empty() {
        return Ok(None);
    }
    case::parse_date_setting(v)
        .map(Some)
        .map_err(Failure::BadRequest)
}

/// `POST /cases/{reference}/fields`.
pub async fn fields(
    State(board): State<Arc<Board>>,
    signed: Signed,
    Path(id): Path<String>,
    Form(form): Form<FieldsForm>,
) -> Result<Response, Failure> {
    allowed(&signed, &form.csrf)?;
    let reference = reference(&id)?;
    let user_notice = match form.user_notice.trim() {
        "" => None,
        n => Some(n.parse::<UserNotice>().map_err(Failure::BadRequest)?),
    };
    let kind = match form.kind.trim() {
        "" => None,
        k => Some(
            RequestKind::parse(k)
                .ok_or_else(|| Failure::BadRequest(format!("`{k}` is not a request kind")))?,
        ),
    };
    let emergency = match form.emergency.trim() {
        "" => None,
        "yes" => Some(true),
        "no" => Some(false),
        e => {
            return Err(Failure::BadRequest(format!(
                "emergency: `{e}` is not yes or no"
            )));
        }
    };
    let outcome = match form.outcome.trim() {
        "" => None,
        o => Some(case::parse_outcome_setting(o).map_err(Failure::BadRequest)?),
    };
    let changes = Changes {
        outcome,
        hard_copy_served: date(&form.hard_copy_served)?,
        user_notice,
        // The until field is sent with every form; it applies only to a
        // prohibition.
        until: if user_notice == Some(UserNotice::Prohibited) {
            date(&form.until)?
        } else {
            None
        },
        user_notified: date(&form.user_notified)?,
        deadline: date(&form.deadline)?,
        kind,
        emergency,
        note: Some(form.note.trim().to_string()).filter(|n| !n.is_empty()),
    };
    let (actor, clock) = (signed.actor(), board.clock);
    let lines = board
        .store
        .run(move |s| casework::set(s, reference, &changes, &actor, clock))
        .await?;
    for line in lines {
        tracing::info!("case board: {line} (by {})", signed.actor());
    }
    Ok(back(reference))
}

#[derive(Deserialize)]
pub struct NoteForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    note: String,
}

/// `POST /cases/{reference}/note`.
pub async fn note(
    State(board): State<Arc<Board>>,
    signed: Signed,
    Path(id): Path<String>,
    Form(form): Form<NoteForm>,
) -> Result<Response, Failure> {
    allowed(&signed, &form.csrf)?;
    let reference = reference(&id)?;
    let note = form.note.trim().to_string();
    if note.is_empty() {
        return Err(Failure::BadRequest("the note is empty".into()));
    }
    let changes = Changes {
        note: Some(note),
        ..Changes::default()
    };
    let (actor, clock) = (signed.actor(), board.clock);
    board
        .store
        .run(move |s| casework::set(s, reference, &changes, &actor, clock))
        .await?;
    Ok(back(reference))
}

#[derive(Deserialize)]
pub struct ReleaseForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    note: String,
}

/// `POST /cases/{reference}/release`: a quarantined request, confirmed out
/// of band, moves to `under_review` with an acknowledgement queued.
pub async fn release(
    State(board): State<Arc<Board>>,
    signed: Signed,
    Path(id): Path<String>,
    Form(form): Form<ReleaseForm>,
) -> Result<Response, Failure> {
    allowed(&signed, &form.csrf)?;
    let reference = reference(&id)?;
    let (actor, clock, domain) = (signed.actor(), board.clock, board.reply_domain.clone());
    let lines = board
        .store
        .run(move |s| casework::release(s, reference, &form.note, &domain, &actor, clock))
        .await?;
    for line in lines {
        tracing::info!("case board: {line}");
    }
    Ok(back(reference))
}
