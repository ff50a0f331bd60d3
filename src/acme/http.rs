//! instant-acme's HTTP requests sent through postern's own HTTPS client (reqwest on
//! postern's rustls configuration: system roots or `[tls.acme] ca_file`), so the ACME
//! client brings no TLS stack of its own.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use instant_acme::{BodyWrapper, BytesResponse, Error, HttpClient};

/// An [`HttpClient`] on a reqwest client.
pub struct Https(pub reqwest::Client);

impl HttpClient for Https {
    fn request(
        &self,
        request: http::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, Error>> + Send>> {
        let client = self.0.clone();
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let body = match body.collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(never) => match never {},
            };
            let response = client
                .request(parts.method, parts.uri.to_string())
                .headers(parts.headers)
                .body(body)
                .send()
                .await
                .map_err(|error| Error::Other(Box::new(error)))?;
            let mut answer = http::Response::builder().status(response.status());
            if let Some(headers) = answer.headers_mut() {
                *headers = response.headers().clone();
            }
            let bytes = response
                .bytes()
                .await
                .map_err(|error| Error::Other(Box::new(error)))?;
            let answer = answer
                .body(Full::new(bytes))
                .map_err(|error| Error::Other(Box::new(error)))?;
            Ok(BytesResponse::from(answer))
        })
    }
}
