//! Response bodies: a whole JSON document, or a stream of server-sent events fed
//! from a channel. Dropping a stream (the client went away) closes its channel,
//! which cancels the generation feeding it.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::Response;
use hyper::body::{Body, Frame};
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use tokio::sync::mpsc;

pub type ApiBody = BoxBody<Bytes, Infallible>;

pub fn json_response(value: serde_json::Value) -> Response<ApiBody> {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())).boxed());
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

pub fn text_response(text: String) -> Response<ApiBody> {
    let mut response = Response::new(Full::new(Bytes::from(text)).boxed());
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// A `text/event-stream` response and the sender of its events.
pub fn event_stream() -> (Response<ApiBody>, EventSender) {
    let (sender, receiver) = mpsc::channel(64);
    let mut response = Response::new(EventBody { receiver }.boxed());
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    (response, EventSender { sender })
}

pub struct EventSender {
    sender: mpsc::Sender<Bytes>,
}

impl EventSender {
    /// Sends `data: {json}`; false once the client has gone.
    pub async fn data(&self, value: &serde_json::Value) -> bool {
        self.raw(format!("data: {value}\n\n")).await
    }

    /// Sends the terminating `data: [DONE]`.
    pub async fn done(&self) -> bool {
        self.raw("data: [DONE]\n\n".to_string()).await
    }

    async fn raw(&self, event: String) -> bool {
        self.sender.send(Bytes::from(event)).await.is_ok()
    }
}

struct EventBody {
    receiver: mpsc::Receiver<Bytes>,
}

impl Body for EventBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.receiver
            .poll_recv(cx)
            .map(|event| event.map(|bytes| Ok(Frame::data(bytes))))
    }
}
