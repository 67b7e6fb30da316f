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

use super::idle::Activity;

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
    /// The body's trailers, when it has some.
    fn trailers(&mut self, _trailers: &http::HeaderMap) {}
}

impl Observer for crate::telemetry::stats::GaugeGuard {}

impl Observer for () {}

impl Observer for crate::upstream::host::InFlight {}

impl<A: Observer, B: Observer> Observer for (A, B) {
    fn data(&mut self, bytes: usize) {
        self.0.data(bytes);
        self.1.data(bytes);
    }
    fn trailers(&mut self, trailers: &http::HeaderMap) {
        self.0.trailers(trailers);
        self.1.trailers(trailers);
    }
}

#[derive(Debug)]
pub struct StreamIdle;

impl std::fmt::Display for StreamIdle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stream idle timeout")
    }
}
impl std::error::Error for StreamIdle {}

pin_project_lite::pin_project! {
    /// A body that owns `guard` until it ends or is dropped, and fails with
    /// [`DeadlineExceeded`] if `deadline` passes before its end, or with [`StreamIdle`]
    /// if its stream's `idle` activity stops for the idle timeout.
    pub struct Guarded<B, G> {
        #[pin]
        inner: B,
        guard: Option<G>,
        deadline: Option<Pin<Box<Sleep>>>,
        idle: Option<(Activity, Option<Pin<Box<Sleep>>>)>,
    }
}

impl<B, G> Guarded<B, G> {
    pub fn new(inner: B, guard: G, deadline: Option<Pin<Box<Sleep>>>) -> Self {
        Guarded {
            inner,
            guard: Some(guard),
            deadline,
            idle: None,
        }
    }

    /// Also ends the body when the stream has been idle for `activity`'s timeout; data
    /// frames of this body count as activity.
    pub fn with_idle(mut self, activity: Option<Activity>) -> Self {
        // The timer is made the first time the body waits.
        self.idle = activity.map(|a| (a, None));
        self
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
        let res = this.inner.poll_frame(cx).map_err(Into::into);
        match &res {
            // The timers only matter while the body waits: a body that is ready never
            // registers them (most small responses end in their first poll).
            Poll::Pending => {
                if let Some(d) = this.deadline.as_mut()
                    && d.as_mut().poll(cx).is_ready()
                {
                    this.guard.take();
                    return Poll::Ready(Some(Err(Box::new(DeadlineExceeded))));
                }
                if let Some((activity, sleep)) = this.idle.as_mut() {
                    let sleep = sleep.get_or_insert_with(|| {
                        Box::pin(tokio::time::sleep_until(activity.deadline()))
                    });
                    // The other direction may have moved since the timer was set.
                    while sleep.as_mut().poll(cx).is_ready() {
                        let next = activity.deadline();
                        if next <= tokio::time::Instant::now() {
                            this.guard.take();
                            return Poll::Ready(Some(Err(Box::new(StreamIdle))));
                        }
                        sleep.as_mut().reset(next);
                    }
                }
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if let Some(g) = this.guard.as_mut() {
                        g.data(data.len());
                    }
                    if let Some((activity, _)) = this.idle.as_ref() {
                        activity.touch();
                    }
                } else if let Some(t) = frame.trailers_ref()
                    && let Some(g) = this.guard.as_mut()
                {
                    g.trailers(t);
                }
            }
            Poll::Ready(_) => {}
        }
        if let Poll::Ready(None | Some(Err(_))) = &res {
            this.guard.take();
            this.deadline.take();
            this.idle.take();
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http_body_util::StreamBody;

    use super::*;

    /// After response headers, a body that stops moving for the route's idle timeout
    /// ends with [`StreamIdle`]; activity on the request side keeps it alive.
    #[tokio::test(start_paused = true)]
    async fn idle_body_ends_after_the_quiet_timeout() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(4);
        let stream = tokio_stream_from(rx);
        let activity = Activity::new(Duration::from_secs(1));
        let body =
            Guarded::new(StreamBody::new(stream), (), None).with_idle(Some(activity.clone()));
        let mut body = std::pin::pin!(body);
        tx.send(Ok(Frame::data(Bytes::from_static(b"a"))))
            .await
            .unwrap();
        assert!(body.frame().await.unwrap().is_ok());
        let start = tokio::time::Instant::now();
        // The request side moves at 0.5 s: the body may stay quiet until 1.5 s.
        let other = activity.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            other.touch();
        });
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(err.is::<StreamIdle>());
        assert_eq!(start.elapsed(), Duration::from_millis(1500));
        drop(tx);
    }

    fn tokio_stream_from<T: Send + 'static>(
        mut rx: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures_util::Stream<Item = T> {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}
