//! A request body that can be sent again: the downstream body is read once, each frame
//! passed to the attempt reading it and kept (up to the buffer limit) so a retry sends
//! the same bytes. Past the limit the request still streams, only no longer replays
//! (Envoy's `retry_or_shadow_abandoned`).
use std::{
    pin::Pin,
    sync::{Arc, Mutex, Weak},
    task::{Context, Poll},
};

use tokio::sync::Notify;

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body as HttpBody, Frame, SizeHint};

use crate::{
    http::body::{Body, BoxError},
    telemetry::stats::Counter,
};

enum Kept {
    Data(Bytes),
    Trailers(HeaderMap),
}

struct Shared {
    /// The downstream body, until it ends.
    source: Option<Body>,
    /// The frames read so far (all of them, while replayable).
    kept: Vec<Kept>,
    kept_bytes: usize,
    limit: usize,
    /// The limit was passed or the body failed: no attempt after the current one.
    spent: bool,
    /// The newest attempt; an older one reading again is cut off.
    epoch: u32,
    abandoned: Counter,
    /// Woken when the body ends, stops being replayable, or is dropped: a mirror
    /// waits for the whole body.
    changed: Arc<Notify>,
}

impl Shared {
    /// Keeps a frame for replay; past the limit, drops what was kept and counts the
    /// body abandoned. Whether the body is still replayable.
    fn keep(&mut self, frame: &Frame<Bytes>) -> bool {
        let kept = if let Some(d) = frame.data_ref() {
            self.kept_bytes += d.len();
            Kept::Data(d.clone())
        } else if let Some(t) = frame.trailers_ref() {
            Kept::Trailers(t.clone())
        } else {
            return true;
        };
        if self.kept_bytes > self.limit {
            self.spent = true;
            self.kept = Vec::new();
            self.abandoned.inc();
            self.changed.notify_waiters();
            false
        } else {
            self.kept.push(kept);
            true
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.changed.notify_waiters();
    }
}

/// The downstream body, shared by the attempts of one request.
pub struct Replay {
    shared: Arc<Mutex<Shared>>,
    hint: SizeHint,
}

impl Replay {
    pub fn new(body: Body, limit: usize, abandoned: Counter) -> Self {
        let hint = body.size_hint();
        Replay {
            shared: Arc::new(Mutex::new(Shared {
                source: Some(body),
                kept: Vec::new(),
                kept_bytes: 0,
                limit,
                spent: false,
                epoch: 0,
                abandoned,
                changed: Arc::default(),
            })),
            hint,
        }
    }

    /// A handle that waits for the whole body (for a mirror), without reading it.
    pub fn whole(&self) -> Whole {
        Whole {
            shared: Arc::downgrade(&self.shared),
            changed: self.shared.lock().unwrap().changed.clone(),
        }
    }

    /// Whether another attempt can send the whole body.
    pub fn replayable(&self) -> bool {
        !self.shared.lock().unwrap().spent
    }

    /// Reads the body on while no attempt does (a retry's back-off), keeping it for
    /// the next attempt, as Envoy buffers it then. Returns if it passes the buffer
    /// limit (nothing can be sent whole any more); otherwise never.
    pub async fn read_ahead(&self) {
        std::future::poll_fn(|cx| {
            let mut s = self.shared.lock().unwrap();
            loop {
                if s.spent {
                    return Poll::Pending;
                }
                let Some(source) = s.source.as_mut() else {
                    return Poll::Pending;
                };
                match Pin::new(source).poll_frame(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(None) => {
                        s.source = None;
                        s.changed.notify_waiters();
                    }
                    // The next attempt meets the failure where it stands.
                    Poll::Ready(Some(Err(_))) => {
                        s.spent = true;
                        s.changed.notify_waiters();
                    }
                    Poll::Ready(Some(Ok(frame))) => {
                        if s.source.as_ref().is_some_and(HttpBody::is_end_stream) {
                            s.source = None;
                            s.changed.notify_waiters();
                        }
                        if !s.keep(&frame) {
                            return Poll::Ready(());
                        }
                    }
                }
            }
        })
        .await
    }

    /// The body for the next attempt (it starts from the first byte).
    pub fn attempt(&self) -> Attempt {
        let mut s = self.shared.lock().unwrap();
        s.epoch += 1;
        Attempt {
            shared: self.shared.clone(),
            epoch: s.epoch,
            next: 0,
            hint: self.hint,
            ended: false,
        }
    }
}

/// One attempt's view of the request body.
pub struct Attempt {
    shared: Arc<Mutex<Shared>>,
    epoch: u32,
    next: usize,
    hint: SizeHint,
    ended: bool,
}

#[derive(Debug)]
pub struct Superseded;

impl std::fmt::Display for Superseded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("request retried on another attempt")
    }
}
impl std::error::Error for Superseded {}

impl HttpBody for Attempt {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let mut s = this.shared.lock().unwrap();
        if s.epoch != this.epoch {
            return Poll::Ready(Some(Err(Box::new(Superseded))));
        }
        if let Some(k) = s.kept.get(this.next) {
            this.next += 1;
            return Poll::Ready(Some(Ok(match k {
                Kept::Data(d) => Frame::data(d.clone()),
                Kept::Trailers(t) => Frame::trailers(t.clone()),
            })));
        }
        let Some(source) = s.source.as_mut() else {
            this.ended = true;
            return Poll::Ready(None);
        };
        match Pin::new(source).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                s.source = None;
                s.changed.notify_waiters();
                this.ended = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                s.spent = true;
                s.changed.notify_waiters();
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(Some(Ok(frame))) => {
                // A body of known length may never be polled past its last byte.
                if s.source.as_ref().is_some_and(HttpBody::is_end_stream) {
                    s.source = None;
                    s.changed.notify_waiters();
                }
                if !s.spent && s.keep(&frame) {
                    this.next = s.kept.len();
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.hint.exact() == Some(0)
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

/// Waits for a request body to be read to its end by the attempts.
pub struct Whole {
    shared: Weak<Mutex<Shared>>,
    changed: Arc<Notify>,
}

impl Whole {
    /// The whole body, once the attempts have read it; `None` if it will never be
    /// whole here: past the buffer limit, failed, or abandoned unread.
    pub async fn wait(self) -> Option<(Bytes, Option<HeaderMap>)> {
        loop {
            let changed = self.changed.notified();
            let mut changed = std::pin::pin!(changed);
            changed.as_mut().enable();
            {
                let shared = self.shared.upgrade()?;
                let s = shared.lock().unwrap();
                if s.spent {
                    return None;
                }
                if s.source.is_none() {
                    let mut data = bytes::BytesMut::with_capacity(s.kept_bytes);
                    let mut trailers = None;
                    for k in &s.kept {
                        match k {
                            Kept::Data(d) => data.extend_from_slice(d),
                            Kept::Trailers(t) => trailers = Some(t.clone()),
                        }
                    }
                    return Some((data.freeze(), trailers));
                }
            }
            changed.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::body;
    use http_body_util::BodyExt;

    fn chunks(parts: &[&'static str]) -> Body {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p.as_bytes()))))
            .collect();
        body::boxed(http_body_util::StreamBody::new(futures_util::stream::iter(
            frames,
        )))
    }

    #[tokio::test]
    async fn a_second_attempt_sends_the_same_bytes() {
        let r = Replay::new(chunks(&["ab", "cd"]), 100, Counter::default());
        let first = r.attempt().collect().await.unwrap().to_bytes();
        assert!(r.replayable());
        let second = r.attempt().collect().await.unwrap().to_bytes();
        assert_eq!((&first[..], &second[..]), (&b"abcd"[..], &b"abcd"[..]));
    }

    #[tokio::test]
    async fn a_retry_mid_body_replays_then_reads_on() {
        let r = Replay::new(chunks(&["ab", "cd", "ef"]), 100, Counter::default());
        let mut first = r.attempt();
        let f = first.frame().await.unwrap().unwrap();
        assert_eq!(f.into_data().unwrap(), "ab");
        let second = r.attempt().collect().await.unwrap().to_bytes();
        assert_eq!(&second[..], b"abcdef");
        // The first attempt, superseded, is cut off.
        assert!(first.frame().await.unwrap().is_err());
    }

    #[tokio::test]
    async fn a_mirror_gets_the_whole_body_once_it_is_read() {
        let r = Replay::new(chunks(&["ab", "cd"]), 100, Counter::default());
        let whole = tokio::spawn(r.whole().wait());
        tokio::task::yield_now().await;
        assert!(!whole.is_finished());
        r.attempt().collect().await.unwrap();
        let (data, trailers) = whole.await.unwrap().unwrap();
        assert_eq!((&data[..], trailers), (&b"abcd"[..], None));
    }

    #[tokio::test]
    async fn a_mirror_gives_up_on_a_body_nobody_reads() {
        let r = Replay::new(chunks(&["ab"]), 100, Counter::default());
        let whole = tokio::spawn(r.whole().wait());
        tokio::task::yield_now().await;
        drop(r);
        assert!(whole.await.unwrap().is_none());
    }

    #[tokio::test]
    async fn read_ahead_keeps_the_body_for_the_next_attempt() {
        let r = Replay::new(chunks(&["ab", "cd"]), 100, Counter::default());
        let mut first = r.attempt();
        first.frame().await.unwrap().unwrap();
        // Within the limit it reads to the end and then waits for ever.
        let ahead = tokio::time::timeout(std::time::Duration::from_millis(50), r.read_ahead());
        assert!(ahead.await.is_err());
        let second = r.attempt().collect().await.unwrap().to_bytes();
        assert_eq!(&second[..], b"abcd");
    }

    #[tokio::test]
    async fn read_ahead_returns_once_the_body_passes_the_limit() {
        let abandoned = Counter::default();
        let r = Replay::new(chunks(&["abc", "def"]), 4, abandoned.clone());
        r.read_ahead().await;
        assert!(!r.replayable());
        assert_eq!(abandoned.get(), 1);
    }

    #[tokio::test]
    async fn past_the_limit_it_streams_but_no_longer_replays() {
        let abandoned = Counter::default();
        let r = Replay::new(chunks(&["abc", "def"]), 4, abandoned.clone());
        let first = r.attempt().collect().await.unwrap().to_bytes();
        assert_eq!(&first[..], b"abcdef");
        assert!(!r.replayable());
        assert_eq!(abandoned.get(), 1);
    }
}
