//! A real OTLP trace receiver for the tests: gRPC (the collector's `TraceService`) or
//! HTTP/protobuf (`POST /v1/traces`), decoding `opentelemetry-proto`'s messages and keeping
//! every span with its resource. Runs on its own runtime thread until dropped with the test.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

/// A received span and its resource's attributes.
#[derive(Debug, Clone)]
pub struct Received {
    pub span: Span,
    pub resource: Vec<KeyValue>,
}

type Store = Arc<Mutex<Vec<Received>>>;

fn keep(store: &Store, req: ExportTraceServiceRequest) {
    let mut s = store.lock().unwrap_or_else(|e| e.into_inner());
    for rs in req.resource_spans {
        let resource = rs.resource.map(|r| r.attributes).unwrap_or_default();
        for ss in rs.scope_spans {
            for span in ss.spans {
                s.push(Received { span, resource: resource.clone() });
            }
        }
    }
}

struct Grpc(Store);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        keep(&self.0, request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

/// A running receiver.
pub struct Receiver {
    pub port: u16,
    store: Store,
    requests: Arc<AtomicU64>,
}

impl Receiver {
    /// A gRPC receiver (`OTEL_EXPORTER_OTLP_PROTOCOL=grpc`) on a free loopback port.
    pub fn grpc() -> Receiver {
        Receiver::serve(|port, s, _| async move {
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(Grpc(s)))
                .serve(addr)
                .await
                .expect("OTLP gRPC receiver");
        })
    }

    /// Runs `server(port, store, requests)` on its own runtime thread, on a free loopback
    /// port, and returns once the port accepts connections.
    fn serve<F: std::future::Future<Output = ()> + 'static>(
        server: impl FnOnce(u16, Store, Arc<AtomicU64>) -> F + Send + 'static,
    ) -> Receiver {
        let port = crate::free_port();
        let store = Store::default();
        let requests = Arc::new(AtomicU64::new(0));
        let (s, r) = (Arc::clone(&store), Arc::clone(&requests));
        std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().expect("runtime");
            rt.block_on(server(port, s, r));
        });
        crate::wait_for_port(port);
        Receiver { port, store, requests }
    }

    /// An HTTP/protobuf sink for benchmarks: answers 200 to every `POST /v1/traces` and counts
    /// the requests, decoding and keeping nothing (what a collector costs is not the
    /// observer's to measure).
    pub fn sink() -> Receiver {
        Receiver::serve(|port, _, requests| async move {
            let app = axum::Router::new().route(
                "/v1/traces",
                axum::routing::post(move |_body: axum::body::Bytes| {
                    requests.fetch_add(1, Ordering::Relaxed);
                    async { ([("content-type", "application/x-protobuf")], Vec::<u8>::new()) }
                }),
            );
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("bind OTLP sink");
            axum::serve(listener, app).await.expect("OTLP sink");
        })
    }

    /// An HTTP/protobuf receiver (`POST /v1/traces`) on a free loopback port.
    pub fn http() -> Receiver {
        Receiver::serve(|port, s, requests| async move {
            let app = axum::Router::new().route(
                "/v1/traces",
                axum::routing::post(move |body: axum::body::Bytes| {
                    requests.fetch_add(1, Ordering::Relaxed);
                    let s = Arc::clone(&s);
                    async move {
                        match ExportTraceServiceRequest::decode(body) {
                            Ok(req) => {
                                keep(&s, req);
                                let resp = ExportTraceServiceResponse { partial_success: None }.encode_to_vec();
                                (axum::http::StatusCode::OK, [("content-type", "application/x-protobuf")], resp)
                            }
                            Err(_) => (
                                axum::http::StatusCode::BAD_REQUEST,
                                [("content-type", "text/plain")],
                                b"not an ExportTraceServiceRequest".to_vec(),
                            ),
                        }
                    }
                }),
            );
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("bind OTLP HTTP receiver");
            axum::serve(listener, app).await.expect("OTLP HTTP receiver");
        })
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Received> {
        self.store.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// HTTP export requests received so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

/// The string or integer value of attribute `key`, as text.
pub fn attr(attrs: &[KeyValue], key: &str) -> Option<String> {
    let v = attrs.iter().find(|kv| kv.key == key)?.value.as_ref()?;
    match v {
        AnyValue { value: Some(any_value::Value::StringValue(s)) } => Some(s.clone()),
        AnyValue { value: Some(any_value::Value::IntValue(i)) } => Some(i.to_string()),
        _ => None,
    }
}
