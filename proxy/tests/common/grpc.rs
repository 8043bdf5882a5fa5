//! The gRPC service behind `Backend::grpc`: `Unary` echoes (or fails with the status
//! code asked for in `fail_code`), `Bidi` echoes every message of the stream.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures_util::{Stream, StreamExt};
use tonic::{Code, Request, Response, Status, Streaming};

use super::backend::Counters;

pub mod pb {
    tonic::include_proto!("strait.test.echo");
}

use pb::echo_server::{Echo, EchoServer};
use pb::{EchoReply, EchoRequest};

pub struct EchoService {
    counters: Arc<Counters>,
}

pub(super) fn server(counters: Arc<Counters>) -> EchoServer<EchoService> {
    EchoServer::new(EchoService { counters })
}

#[tonic::async_trait]
impl Echo for EchoService {
    async fn unary(&self, req: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        self.counters.requests.fetch_add(1, Ordering::SeqCst);
        let req = req.into_inner();
        if req.fail_code != 0 {
            return Err(Status::new(
                Code::from(req.fail_code),
                format!("requested failure: {}", req.message),
            ));
        }
        Ok(Response::new(EchoReply {
            message: req.message,
        }))
    }

    type BidiStream = Pin<Box<dyn Stream<Item = Result<EchoReply, Status>> + Send + 'static>>;

    async fn bidi(
        &self,
        req: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<Self::BidiStream>, Status> {
        self.counters.requests.fetch_add(1, Ordering::SeqCst);
        let replies = req.into_inner().map(reply_to);
        Ok(Response::new(Box::pin(replies)))
    }
}

// `Status` is what tonic's streams carry; boxing it here would only unbox it again.
#[allow(clippy::result_large_err)]
fn reply_to(m: Result<EchoRequest, Status>) -> Result<EchoReply, Status> {
    let m = m?;
    if m.fail_code != 0 {
        return Err(Status::new(Code::from(m.fail_code), "requested failure"));
    }
    Ok(EchoReply { message: m.message })
}

/// A gRPC client over h2c to `addr` (the proxy or a backend).
pub async fn client(
    addr: std::net::SocketAddr,
) -> pb::echo_client::EchoClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("valid endpoint")
        .connect_timeout(std::time::Duration::from_secs(10))
        .timeout(std::time::Duration::from_secs(30))
        .connect()
        .await
        .expect("gRPC connect");
    pb::echo_client::EchoClient::new(channel)
}
