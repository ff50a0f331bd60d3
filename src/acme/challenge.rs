//! The HTTP-01 responder: `GET /.well-known/acme-challenge/{token}` on
//! `[tls.acme] http_challenge_bind`, answered from the store, so whichever instance the
//! CA reaches answers for the instance that ordered. Everything else is 404.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

use crate::store::Store;

/// Serves challenges on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    store: Store,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/.well-known/acme-challenge/{token}", get(answer))
        .with_state(store);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn answer(State(store): State<Store>, Path(token): Path<String>) -> (StatusCode, String) {
    match store.acme_challenge(&token).await {
        Ok(Some(key_authorization)) => (StatusCode::OK, key_authorization),
        Ok(None) => (StatusCode::NOT_FOUND, "no such challenge\n".into()),
        Err(error) => {
            tracing::warn!(%error, "cannot read the ACME challenge");
            (StatusCode::SERVICE_UNAVAILABLE, "try again\n".into())
        }
    }
}
