//! The body type that flows through the proxy, and a wrapper that keeps per-request
//! state (active gauges, the route deadline) alive exactly as long as the body streams.
use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::{BodyExt, Empty, Full, combinators::BoxBody};
use tokio::time::Sleep;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = BoxBody<Bytes, BoxError>;

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
}

pub fn boxed<B>(b: B) -> Body
where
    B: HttpBody<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    b.map_err(Into::into).boxed()
}

#[derive(Debug)]
pub struct DeadlineExceeded;

impl std::fmt::Display for DeadlineExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("upstream request timeout")
    }
}
impl std::error::Error for DeadlineExceeded {}

/// Per-request state a body carries: told of each data frame, dropped at the end.
pub trait Observer: Send + 'static {
    fn data(&mut self, _bytes: usize) {}
}

impl Observer for crate::telemetry::stats::GaugeGuard {}

impl Observer for () {}

pin_project_lite::pin_project! {
    /// A body that owns `guard` until it ends or is dropped, and fails with
    /// [`DeadlineExceeded`] if `deadline` passes before its end.
    pub struct Guarded<B, G> {
        #[pin]
        inner: B,
        guard: Option<G>,
        deadline: Option<Pin<Box<Sleep>>>,
    }
}

impl<B, G> Guarded<B, G> {
    pub fn new(inner: B, guard: G, deadline: Option<Pin<Box<Sleep>>>) -> Self {
        Guarded {
            inner,
            guard: Some(guard),
            deadline,
        }
    }
}

impl<B, G> HttpBody for Guarded<B, G>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
    G: Observer,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        if let Some(d) = this.deadline.as_mut()
            && d.as_mut().poll(cx).is_ready()
        {
            this.guard.take();
            return Poll::Ready(Some(Err(Box::new(DeadlineExceeded))));
        }
        let res = this.inner.poll_frame(cx).map_err(Into::into);
        if let (Poll::Ready(Some(Ok(frame))), Some(g)) = (&res, this.guard.as_mut())
            && let Some(data) = frame.data_ref()
        {
            g.data(data.len());
        }
        if let Poll::Ready(None | Some(Err(_))) = &res {
            this.guard.take();
            this.deadline.take();
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
