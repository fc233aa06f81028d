//! Moving bytes: a source object (or a byte range of it) read as a stream, from S3 or from a
//! file, fed straight into a PUT or an UploadPart while it is hashed, so nothing is staged on
//! disk or held whole in memory and every write is checked against the MD5 of what was read.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use aws_sdk_s3::primitives::ByteStream;
use aws_smithy_types::body::SdkBody;
use bytes::Bytes;
use futures_util::Stream;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

use super::digest::PartHasher;
use super::endpoint::Failure;
use crate::core::{ErrorKind, StoreError, StoreKind};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Where the bytes come from.
pub enum Feed {
    S3(Pin<Box<ByteStream>>),
    File(ReaderStream<tokio::io::Take<tokio::fs::File>>),
}

impl Feed {
    /// `len` bytes of a file from `offset`, with the file's identity before reading.
    pub async fn file(path: &std::path::Path, offset: u64, len: u64) -> std::io::Result<Feed> {
        let mut f = tokio::fs::File::open(path).await?;
        if offset > 0 {
            f.seek(std::io::SeekFrom::Start(offset)).await?;
        }
        Ok(Feed::File(ReaderStream::with_capacity(
            f.take(len),
            256 * 1024,
        )))
    }

    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, BoxError>>> {
        match self {
            Feed::S3(b) => b
                .as_mut()
                .poll_next(cx)
                .map(|o| o.map(|r| r.map_err(|e| Box::new(e) as BoxError))),
            Feed::File(r) => Pin::new(r)
                .poll_next(cx)
                .map(|o| o.map(|r| r.map_err(|e| Box::new(e) as BoxError))),
        }
    }

    /// Read everything, hashing it as the parts of an upload would be.
    pub async fn hash(
        mut self,
        expect: u64,
        parts: Vec<u64>,
    ) -> Result<([u8; 16], String), String> {
        let mut hasher = PartHasher::new(parts);
        let mut seen = 0u64;
        loop {
            let chunk = std::future::poll_fn(|cx| self.poll_chunk(cx)).await;
            match chunk {
                Some(Ok(b)) => {
                    seen += b.len() as u64;
                    hasher.update(&b);
                }
                Some(Err(e)) => return Err(format!("reading failed: {e}")),
                None => break,
            }
        }
        if seen != expect {
            return Err(format!(
                "read {seen} bytes where {expect} were expected: it changed while being read"
            ));
        }
        Ok(hasher.finish())
    }
}

/// What a body saw once it ended: the MD5 of everything (`None` when it only counted), or why
/// it failed.
pub type BodyReport = Arc<Mutex<Option<Result<Option<[u8; 16]>, BodyFailure>>>>;

/// Why a body failed.
#[derive(Debug, Clone)]
pub enum BodyFailure {
    /// The S3 source's stream broke off (connection reset, timeout): the object is fine, the
    /// link was not, and the same copy may well succeed again.
    SourceBroke(String),
    /// This object's bytes are wrong (a file unreadable, more or fewer bytes than announced).
    Object(String),
}

impl BodyFailure {
    /// As the store acts on it: a broken S3 stream is a transient error of the source at
    /// `source_address` (the runner retries the batch); anything else fails this object alone.
    pub fn into_failure(self, source_address: String) -> Failure {
        match self {
            BodyFailure::SourceBroke(msg) => Failure::Fatal(StoreError::new(
                StoreKind::Objects,
                source_address,
                ErrorKind::Transient,
                format!("reading the source broke off: {msg}"),
                "offload retries this on its own; if it keeps failing, check the network to the source and its logs",
            )),
            BodyFailure::Object(msg) => Failure::Object(msg),
        }
    }
}

/// A request body that passes a [`Feed`] through, counting (and, when asked, hashing) it, and
/// fails the request when the source yields more or fewer bytes than announced.
pub struct HashingBody {
    feed: Feed,
    hasher: Option<PartHasher>,
    finished: bool,
    seen: u64,
    expect: u64,
    report: BodyReport,
}

impl HashingBody {
    /// A body of exactly `expect` bytes, hashed as one part.
    pub fn stream(feed: Feed, expect: u64) -> (ByteStream, BodyReport) {
        Self::build(feed, expect, true)
    }

    /// A body of exactly `expect` bytes, counted but not hashed: for uploads whose bytes the
    /// target checks itself (a Content-MD5 header, or part ETags that must add up to the
    /// source's ETag), so the MD5 would be computed twice.
    pub fn counted(feed: Feed, expect: u64) -> (ByteStream, BodyReport) {
        Self::build(feed, expect, false)
    }

    fn build(feed: Feed, expect: u64, hash: bool) -> (ByteStream, BodyReport) {
        let report: BodyReport = Arc::new(Mutex::new(None));
        let body = HashingBody {
            feed,
            hasher: hash.then(|| PartHasher::new(vec![expect])),
            finished: false,
            seen: 0,
            expect,
            report: report.clone(),
        };
        (ByteStream::new(SdkBody::from_body_1_x(body)), report)
    }

    /// Record that the body is complete.
    fn finish(&mut self) {
        self.finished = true;
        let md5 = self.hasher.take().map(|h| h.finish().0);
        *self.report.lock().expect("body report") = Some(Ok(md5));
    }

    fn fail(&mut self, msg: String) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        self.fail_as(BodyFailure::Object(msg.clone()), msg)
    }

    fn fail_as(
        &mut self,
        failure: BodyFailure,
        msg: String,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        *self.report.lock().expect("body report") = Some(Err(failure));
        self.finished = true;
        self.hasher = None;
        Poll::Ready(Some(Err(msg.into())))
    }
}

impl http_body::Body for HashingBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.finished {
            return Poll::Ready(None);
        }
        if this.expect == 0 {
            this.finish();
            return Poll::Ready(None);
        }
        match this.feed.poll_chunk(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(bytes))) => {
                this.seen += bytes.len() as u64;
                if this.seen > this.expect {
                    return this.fail(format!(
                        "the source yielded more than the {} bytes announced: it changed while being read",
                        this.expect
                    ));
                }
                if let Some(h) = this.hasher.as_mut() {
                    h.update(&bytes);
                }
                if this.seen == this.expect {
                    // The client may stop polling once the announced length is sent: record now.
                    this.finish();
                }
                Poll::Ready(Some(Ok(http_body::Frame::data(bytes))))
            }
            Poll::Ready(Some(Err(e))) => {
                let msg = format!("reading the source failed: {e}");
                match this.feed {
                    Feed::S3(_) => this.fail_as(BodyFailure::SourceBroke(msg.clone()), msg),
                    Feed::File(_) => this.fail(msg),
                }
            }
            Poll::Ready(None) => {
                if this.seen != this.expect {
                    let (seen, expect) = (this.seen, this.expect);
                    return this.fail(format!(
                        "the source ended after {seen} of {expect} bytes: it changed while being read"
                    ));
                }
                this.finish();
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.finished
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.expect)
    }
}

/// The outcome a body recorded, if it finished.
pub fn body_result(report: &BodyReport) -> Option<Result<Option<[u8; 16]>, BodyFailure>> {
    report.lock().expect("body report").clone()
}
