//! A request body that can be sent again: the downstream body is read once, each frame
//! passed to the attempt reading it and kept (up to the buffer limit) so a retry sends
//! the same bytes. Past the limit the request still streams, only no longer replays
//! (Envoy's `retry_or_shadow_abandoned`). Mirrors tap it: each frame read is also
//! queued for each mirror as it arrives, and a mirror that falls a buffer limit behind
//! is cut off rather than hold the request back.
use crate::sync::MutexExt;
use std::{
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
};

use tokio::sync::mpsc;

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
    /// The mirrors' copies of the body, fed as it is read.
    taps: Vec<TapTx>,
}

/// The sending side of a mirror's copy, how many bytes wait in it, and how many may.
struct TapTx {
    tx: mpsc::UnboundedSender<Result<Frame<Bytes>, BoxError>>,
    queued: Arc<AtomicUsize>,
    limit: usize,
}

impl Shared {
    /// Passes a frame read from the source to each mirror; one that has its limit of
    /// bytes queued already is cut off (its copy fails) and counted.
    fn feed_taps(&mut self, frame: &Frame<Bytes>) {
        if self.taps.is_empty() {
            return;
        }
        let len = frame.data_ref().map_or(0, Bytes::len);
        let abandoned = &self.abandoned;
        self.taps.retain(|t| {
            if t.queued.load(Ordering::Relaxed) + len > t.limit {
                abandoned.inc();
                let _ = t.tx.send(Err(Box::new(Cut::MirrorAbandoned)));
                return false;
            }
            let copy = match (frame.data_ref(), frame.trailers_ref()) {
                (Some(d), _) => Frame::data(d.clone()),
                (None, Some(t)) => Frame::trailers(t.clone()),
                (None, None) => return true,
            };
            t.queued.fetch_add(len, Ordering::Relaxed);
            t.tx.send(Ok(copy)).is_ok()
        });
    }

    /// The source ended (`None`) or failed: the copies end the same way.
    fn end_taps(&mut self, failed: bool) {
        for t in self.taps.drain(..) {
            if failed {
                let _ = t.tx.send(Err(Box::new(Cut::MirrorAbandoned)));
            }
        }
    }

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
            false
        } else {
            self.kept.push(kept);
            true
        }
    }
}

impl Drop for Shared {
    /// A body dropped before its end (the request was abandoned) must not look whole
    /// to a mirror.
    fn drop(&mut self) {
        let unfinished = self.source.is_some();
        self.end_taps(unfinished);
    }
}

/// Why a reader of the body was cut off.
#[derive(Debug)]
pub enum Cut {
    /// An attempt retried on another one.
    Superseded,
    /// A mirror's copy fell behind, or the request body did not finish.
    MirrorAbandoned,
}

impl std::fmt::Display for Cut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Cut::Superseded => "request retried on another attempt",
            Cut::MirrorAbandoned => "mirror copy of the request body abandoned",
        })
    }
}
impl std::error::Error for Cut {}

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
                taps: Vec::new(),
            })),
            hint,
        }
    }

    /// A mirror's copy of the body, fed as the attempts read it (the frames read so
    /// far first), cut off when `limit` bytes wait in it; `None` once the body is past
    /// replaying (its start is gone).
    pub fn tap(&self, limit: usize) -> Option<Tap> {
        let mut s = self.shared.locked();
        if s.spent {
            return None;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        for k in &s.kept {
            let frame = match k {
                Kept::Data(d) => {
                    queued.fetch_add(d.len(), Ordering::Relaxed);
                    Frame::data(d.clone())
                }
                Kept::Trailers(t) => Frame::trailers(t.clone()),
            };
            let _ = tx.send(Ok(frame));
        }
        if s.source.is_some() {
            s.taps.push(TapTx {
                tx,
                queued: queued.clone(),
                limit,
            });
        }
        Some(Tap {
            rx,
            queued,
            hint: self.hint,
        })
    }

    /// Whether another attempt can send the whole body.
    pub fn replayable(&self) -> bool {
        !self.shared.locked().spent
    }

    /// Reads the body on while no attempt does (a retry's back-off), keeping it for
    /// the next attempt, as Envoy buffers it then. Returns if it passes the buffer
    /// limit (nothing can be sent whole any more); otherwise never.
    pub async fn read_ahead(&self) {
        std::future::poll_fn(|cx| {
            let mut s = self.shared.locked();
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
                        s.end_taps(false);
                    }
                    // The next attempt meets the failure where it stands.
                    Poll::Ready(Some(Err(_))) => {
                        s.spent = true;
                        s.end_taps(true);
                    }
                    Poll::Ready(Some(Ok(frame))) => {
                        s.feed_taps(&frame);
                        if s.source.as_ref().is_some_and(HttpBody::is_end_stream) {
                            s.source = None;
                            s.end_taps(false);
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
        let mut s = self.shared.locked();
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

impl HttpBody for Attempt {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let mut s = this.shared.locked();
        if s.epoch != this.epoch {
            return Poll::Ready(Some(Err(Box::new(Cut::Superseded))));
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
                s.end_taps(false);
                this.ended = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                s.spent = true;
                s.end_taps(true);
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(Some(Ok(frame))) => {
                s.feed_taps(&frame);
                // A body of known length may never be polled past its last byte.
                if s.source.as_ref().is_some_and(HttpBody::is_end_stream) {
                    s.source = None;
                    s.end_taps(false);
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

/// A mirror's copy of the request body, as the attempts read it.
pub struct Tap {
    rx: mpsc::UnboundedReceiver<Result<Frame<Bytes>, BoxError>>,
    queued: Arc<AtomicUsize>,
    hint: SizeHint,
}

impl HttpBody for Tap {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let r = self.rx.poll_recv(cx);
        if let Poll::Ready(Some(Ok(f))) = &r
            && let Some(d) = f.data_ref()
        {
            self.queued.fetch_sub(d.len(), Ordering::Relaxed);
        }
        r
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
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
    async fn a_mirror_gets_each_frame_as_the_attempt_reads_it() {
        let r = Replay::new(chunks(&["ab", "cd"]), 100, Counter::default());
        let mut tap = r.tap(100).unwrap();
        let mut first = r.attempt();
        first.frame().await.unwrap().unwrap();
        let f = tap.frame().await.unwrap().unwrap();
        assert_eq!(f.into_data().unwrap(), "ab");
        // A retry re-reads what was kept; the mirror gets each byte once.
        let whole = r.attempt().collect().await.unwrap().to_bytes();
        assert_eq!(&whole[..], b"abcd");
        let rest = tap.collect().await.unwrap().to_bytes();
        assert_eq!(&rest[..], b"cd");
    }

    #[tokio::test]
    async fn a_mirror_that_falls_behind_is_cut_off() {
        let abandoned = Counter::default();
        let r = Replay::new(chunks(&["abc", "def", "ghi"]), 5, abandoned.clone());
        let tap = r.tap(5).unwrap();
        // The primary reads everything; the mirror reads nothing.
        let all = r.attempt().collect().await.unwrap().to_bytes();
        assert_eq!(&all[..], b"abcdefghi");
        assert!(tap.collect().await.is_err());
        assert!(abandoned.get() >= 1);
    }

    #[tokio::test]
    async fn a_mirror_keeping_up_gets_a_body_past_the_limit() {
        let r = Replay::new(chunks(&["abc", "def", "ghi"]), 4, Counter::default());
        let mut tap = r.tap(4).unwrap();
        let mut primary = r.attempt();
        let mut copied = Vec::new();
        while let Some(f) = primary.frame().await {
            f.unwrap();
            copied.extend_from_slice(&tap.frame().await.unwrap().unwrap().into_data().unwrap());
        }
        assert!(!r.replayable(), "past the limit: no retry");
        assert_eq!(&copied[..], b"abcdefghi");
        assert!(tap.frame().await.is_none(), "then the copy ends cleanly");
    }

    #[tokio::test]
    async fn a_mirror_of_a_body_nobody_finished_fails() {
        let r = Replay::new(chunks(&["ab", "cd"]), 100, Counter::default());
        let tap = r.tap(100).unwrap();
        drop(r);
        assert!(tap.collect().await.is_err());
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
