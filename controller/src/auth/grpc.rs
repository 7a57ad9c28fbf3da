//! The gRPC side: a tower layer in front of every service. Client services need a bearer
//! token in the `authorization` metadata with the method's role; agent services are let
//! through to their handlers, which check the caller's certificate against the host ids
//! in the request ([`super::identity`]).

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tonic::Status;

use super::{Auth, Refusal, role};
use crate::metrics::Metrics;

/// Adds [`RequireToken`] to a tonic server.
#[derive(Debug, Clone)]
pub struct RequireTokenLayer {
    pub auth: Arc<Auth>,
    pub metrics: Arc<Metrics>,
}

impl<S> tower::Layer<S> for RequireTokenLayer {
    type Service = RequireToken<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequireToken {
            inner,
            auth: self.auth.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RequireToken<S> {
    inner: S,
    auth: Arc<Auth>,
    metrics: Arc<Metrics>,
}

impl<S, B, R> tower::Service<axum::http::Request<B>> for RequireToken<S>
where
    S: tower::Service<axum::http::Request<B>, Response = axum::http::Response<R>> + Send + 'static,
    S::Future: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = axum::http::Response<R>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: axum::http::Request<B>) -> Self::Future {
        let path = request.uri().path();
        if role::AGENT_SERVICES.iter().any(|s| path.starts_with(s)) {
            return Box::pin(self.inner.call(request));
        }
        let needed = role::for_grpc(path);
        let header = request
            .headers()
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        match self.auth.authorize(header, needed) {
            Ok(_) => Box::pin(self.inner.call(request)),
            Err(refusal) => {
                let forbidden = matches!(refusal, Refusal::Forbidden { .. });
                self.metrics.auth_refused(forbidden);
                let status = if forbidden {
                    Status::permission_denied(refusal.to_string())
                } else {
                    Status::unauthenticated(refusal.to_string())
                };
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}
