//! SCIM 2.0 provisioning (RFC 7643/7644), the subset Entra ID and Okta use, so that an
//! identity provider pushes joiners and leavers: `POST /scim/v2/Users` creates a user,
//! `GET /scim/v2/Users?filter=userName eq "…"` and `GET /scim/v2/Users/{id}` find one,
//! `PATCH` (and `PUT`) set `active`, `DELETE` removes. Every request carries the bearer
//! token of `[scim] token_file`. `active: false` disables the user: every app password
//! stops working and live sessions close on every instance, through the change feed.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use subtle::ConstantTimeEq;

use super::Portal;
use crate::accounts::{Actor, AdminError};
use crate::directory::Person;
use crate::store::{StoreError, User};

/// Where SCIM users come from.
pub const SOURCE: &str = "scim";

const USER_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
const LIST_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:ListResponse";
const ERROR_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:Error";

/// A SCIM answer: JSON as `application/scim+json`.
fn answer(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/scim+json")],
        body.to_string(),
    )
        .into_response()
}

/// A SCIM error (RFC 7644 3.12).
fn error(status: StatusCode, detail: &str) -> Response {
    answer(
        status,
        json!({ "schemas": [ERROR_SCHEMA], "status": status.as_u16().to_string(), "detail": detail }),
    )
}

/// The request's bearer token is `[scim] token_file`'s; else the refusal.
#[allow(clippy::result_large_err)] // the error is the answer itself, given at once
fn authorized(portal: &Portal, headers: &HeaderMap) -> Result<(), Response> {
    let refused = || error(StatusCode::UNAUTHORIZED, "a valid bearer token is needed");
    let Some(config) = &portal.scim else {
        return Err(error(StatusCode::NOT_FOUND, "SCIM is not configured"));
    };
    let expected = std::fs::read_to_string(&config.token_file).map_err(|error| {
        tracing::warn!(%error, file = %config.token_file.display(), "scim: cannot read the token file");
        refused()
    })?;
    let expected = expected.lines().next().unwrap_or("").trim();
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .unwrap_or("")
        .trim();
    if expected.is_empty() || !bool::from(expected.as_bytes().ct_eq(presented.as_bytes())) {
        tracing::warn!("scim: a request without the right token");
        return Err(refused());
    }
    Ok(())
}

/// A user as SCIM shows it.
fn resource(user: &User) -> Value {
    let emails: Vec<Value> = user
        .addresses
        .iter()
        .enumerate()
        .map(|(i, address)| json!({ "value": address, "type": "work", "primary": i == 0 }))
        .collect();
    json!({
        "schemas": [USER_SCHEMA],
        "id": user.id.to_string(),
        "userName": user.login,
        "active": user.disabled_at.is_none(),
        "emails": emails,
        "meta": { "resourceType": "User", "location": format!("/scim/v2/Users/{}", user.id) },
    })
}

/// `active` as identity providers send it: a boolean, or Entra ID's `"True"`/`"False"`.
fn boolean(value: &Value) -> Option<bool> {
    match value {
        Value::Bool(b) => Some(*b),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Some(true),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Some(false),
        _ => None,
    }
}

fn failure(what: &str, error: impl std::fmt::Display) -> Response {
    tracing::warn!(%error, "scim: cannot {what}");
    self::error(StatusCode::INTERNAL_SERVER_ERROR, "try again later")
}

#[derive(serde::Deserialize)]
pub struct ListQuery {
    filter: Option<String>,
}

/// `GET /scim/v2/Users[?filter=userName eq "login"]`.
pub async fn list(
    State(portal): State<Arc<Portal>>,
    headers: HeaderMap,
    Query(query): Query<ListQuery>,
) -> Response {
    if let Err(refused) = authorized(&portal, &headers) {
        return refused;
    }
    let users = match query.filter.as_deref() {
        Some(filter) => {
            let Some(login) = user_name_filter(filter) else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "only userName eq \"…\" filters are supported",
                );
            };
            match portal.gateway.store.user(&login).await {
                Ok(user) => user.into_iter().collect(),
                Err(e) => return failure("look a user up", e),
            }
        }
        None => match portal.accounts.users().await {
            Ok(users) => users,
            Err(e) => return failure("list users", e),
        },
    };
    let resources: Vec<Value> = users.iter().map(resource).collect();
    answer(
        StatusCode::OK,
        json!({
            "schemas": [LIST_SCHEMA],
            "totalResults": resources.len(),
            "startIndex": 1,
            "itemsPerPage": resources.len(),
            "Resources": resources,
        }),
    )
}

/// The login of `userName eq "login"` (any case for the operator and attribute).
fn user_name_filter(filter: &str) -> Option<String> {
    let mut parts = filter.trim().splitn(3, ' ');
    let (attribute, operator, value) = (parts.next()?, parts.next()?, parts.next()?);
    if !attribute.eq_ignore_ascii_case("userName") || !operator.eq_ignore_ascii_case("eq") {
        return None;
    }
    let value = value.trim().strip_prefix('"')?.strip_suffix('"')?;
    (!value.is_empty() && !value.contains('"')).then(|| value.to_lowercase())
}

/// `POST /scim/v2/Users`: `userName`, `active`, `emails`.
pub async fn create(
    State(portal): State<Arc<Portal>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(refused) = authorized(&portal, &headers) {
        return refused;
    }
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "the body is not JSON");
    };
    let Some(login) = body["userName"]
        .as_str()
        .map(|name| name.trim().to_lowercase())
        .filter(|name| !name.is_empty() && name.len() <= 256)
    else {
        return error(StatusCode::BAD_REQUEST, "userName is required");
    };
    let mut addresses: Vec<String> = body["emails"]
        .as_array()
        .map(|emails| {
            emails
                .iter()
                .filter_map(|email| email["value"].as_str())
                .filter(|address| address.contains('@'))
                .map(str::to_lowercase)
                .collect()
        })
        .unwrap_or_default();
    if addresses.is_empty() && login.contains('@') {
        addresses.push(login.clone());
    }
    addresses.sort();
    addresses.dedup();
    let person = Person {
        login: login.clone(),
        upstream_user: login.clone(),
        addresses,
        disabled: false,
    };
    let user = match portal.accounts.provision(&person, SOURCE).await {
        Ok(user) => user,
        Err(AdminError::Store(StoreError::UserExists(_))) => {
            return error(StatusCode::CONFLICT, "a user with this userName exists");
        }
        Err(e) => return failure("create a user", e),
    };
    let user = if body.get("active").and_then(boolean) == Some(false) {
        match portal
            .accounts
            .set_disabled_as(&user.login, true, Actor::Directory)
            .await
        {
            Ok(user) => user,
            Err(e) => return failure("disable a user", e),
        }
    } else {
        user
    };
    tracing::info!(login = ?user.login, "scim: user created");
    answer(StatusCode::CREATED, resource(&user))
}

/// The user `{id}` names, or the answer to give.
async fn named(portal: &Portal, id: &str) -> Result<User, Response> {
    let not_found = || error(StatusCode::NOT_FOUND, "no such user");
    let id: i64 = id.parse().map_err(|_| not_found())?;
    match portal.gateway.store.user_by_id(id).await {
        Ok(Some(user)) => Ok(user),
        Ok(None) => Err(not_found()),
        Err(e) => Err(failure("look a user up", e)),
    }
}

/// The user a request about `{id}` names, its token checked; or the answer to give.
async fn addressed(portal: &Portal, headers: &HeaderMap, id: &str) -> Result<User, Response> {
    authorized(portal, headers)?;
    named(portal, id).await
}

/// [`addressed`], and the request's JSON body.
async fn addressed_with(
    portal: &Portal,
    headers: &HeaderMap,
    id: &str,
    body: &[u8],
) -> Result<(User, Value), Response> {
    let user = addressed(portal, headers, id).await?;
    let body = serde_json::from_slice::<Value>(body)
        .map_err(|_| error(StatusCode::BAD_REQUEST, "the body is not JSON"))?;
    Ok((user, body))
}

/// `GET /scim/v2/Users/{id}`.
pub async fn get(
    State(portal): State<Arc<Portal>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    match addressed(&portal, &headers, &id).await {
        Ok(user) => answer(StatusCode::OK, resource(&user)),
        Err(answer) => answer,
    }
}

/// `PATCH /scim/v2/Users/{id}`: operations that set `active` (`{"op": "Replace", "path":
/// "active", "value": "False"}` as Entra ID sends it, or `{"op": "replace", "value":
/// {"active": false}}` as Okta does); others are accepted and ignored.
pub async fn patch(
    State(portal): State<Arc<Portal>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let (user, body) = match addressed_with(&portal, &headers, &id, &body).await {
        Ok(found) => found,
        Err(answer) => return answer,
    };
    let mut active = None;
    for operation in body["Operations"].as_array().into_iter().flatten() {
        let op = operation["op"].as_str().unwrap_or("").to_ascii_lowercase();
        if op != "replace" && op != "add" {
            continue;
        }
        match operation["path"].as_str() {
            Some(path) if path.eq_ignore_ascii_case("active") => {
                active = boolean(&operation["value"]).or(active);
            }
            None => {
                if let Some(value) = operation["value"].get("active") {
                    active = boolean(value).or(active);
                }
            }
            _ => {}
        }
    }
    set_active(&portal, user, active).await
}

/// `PUT /scim/v2/Users/{id}`: the whole resource; its `active` is applied.
pub async fn put(
    State(portal): State<Arc<Portal>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let (user, body) = match addressed_with(&portal, &headers, &id, &body).await {
        Ok(found) => found,
        Err(answer) => return answer,
    };
    set_active(&portal, user, body.get("active").and_then(boolean)).await
}

async fn set_active(portal: &Portal, user: User, active: Option<bool>) -> Response {
    let user = match active {
        Some(active) if active == user.disabled_at.is_some() => {
            match portal
                .accounts
                .set_disabled_as(&user.login, !active, Actor::Directory)
                .await
            {
                Ok(user) => {
                    tracing::info!(login = ?user.login, active, "scim: user changed");
                    user
                }
                Err(e) => return failure("change a user", e),
            }
        }
        _ => user,
    };
    answer(StatusCode::OK, resource(&user))
}

/// `DELETE /scim/v2/Users/{id}`: the user and every app password go.
pub async fn delete(
    State(portal): State<Arc<Portal>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let user = match addressed(&portal, &headers, &id).await {
        Ok(user) => user,
        Err(answer) => return answer,
    };
    match portal
        .accounts
        .remove_user_as(&user.login, Actor::Directory)
        .await
    {
        Ok(()) => {
            tracing::info!(login = ?user.login, "scim: user removed");
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => failure("remove a user", e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_user_name_equality_filters_are_read() {
        assert_eq!(
            user_name_filter("userName eq \"Carol@Example.test\""),
            Some("carol@example.test".into())
        );
        assert_eq!(user_name_filter("username EQ \"x\""), Some("x".into()));
        assert_eq!(user_name_filter("emails eq \"x\""), None);
        assert_eq!(user_name_filter("userName sw \"x\""), None);
        assert_eq!(
            user_name_filter("userName eq \"a\" or userName eq \"b\""),
            None
        );
        assert_eq!(boolean(&json!("False")), Some(false));
        assert_eq!(boolean(&json!(true)), Some(true));
        assert_eq!(boolean(&json!(0)), None);
    }
}
