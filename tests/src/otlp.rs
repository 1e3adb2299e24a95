//! A real OTLP receiver for the tests: gRPC (the collector's `TraceService` and
//! `MetricsService`) or HTTP/protobuf (`POST /v1/traces`, `POST /v1/metrics`, gzip or not),
//! decoding `opentelemetry-proto`'s messages and keeping every span with its resource and
//! every metrics request with its headers. Runs on its own runtime thread until dropped with
//! the test.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
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

/// A metrics request and the headers (gRPC metadata) it came with.
#[derive(Debug, Clone)]
pub struct MetricsRequest {
    pub request: ExportMetricsServiceRequest,
    pub headers: Vec<(String, String)>,
}

type Store = Arc<Mutex<Vec<Received>>>;
type MetricsStore = Arc<Mutex<Vec<MetricsRequest>>>;

fn keep_metrics(store: &MetricsStore, request: ExportMetricsServiceRequest, headers: Vec<(String, String)>) {
    store.lock().unwrap_or_else(|e| e.into_inner()).push(MetricsRequest { request, headers });
}

struct GrpcMetrics(MetricsStore);

#[tonic::async_trait]
impl MetricsService for GrpcMetrics {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let headers = request
            .metadata()
            .iter()
            .filter_map(|kv| match kv {
                tonic::metadata::KeyAndValueRef::Ascii(k, v) => {
                    Some((k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
                }
                tonic::metadata::KeyAndValueRef::Binary(..) => None,
            })
            .collect();
        keep_metrics(&self.0, request.into_inner(), headers);
        Ok(tonic::Response::new(ExportMetricsServiceResponse { partial_success: None }))
    }
}

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

/// What a receiver keeps, shared with its server.
#[derive(Clone, Default)]
struct Stores {
    spans: Store,
    metrics: MetricsStore,
    /// HTTP requests of either signal.
    requests: Arc<AtomicU64>,
}

/// A running receiver.
pub struct Receiver {
    pub port: u16,
    stores: Stores,
}

/// Decodes a request body, gunzipped when its headers say gzip.
fn body<M: Message + Default>(headers: &axum::http::HeaderMap, body: &[u8]) -> Option<M> {
    let gzip = headers.get("content-encoding").is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
    if gzip {
        let mut raw = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(body), &mut raw).ok()?;
        M::decode(&raw[..]).ok()
    } else {
        M::decode(body).ok()
    }
}

fn protobuf_answer(ok: bool, response: Vec<u8>) -> axum::response::Response {
    use axum::response::IntoResponse;
    if ok {
        (axum::http::StatusCode::OK, [("content-type", "application/x-protobuf")], response).into_response()
    } else {
        (axum::http::StatusCode::BAD_REQUEST, [("content-type", "text/plain")], b"not an OTLP request".to_vec())
            .into_response()
    }
}

/// `POST` of an OTLP request `M`: counted, decoded (gunzipped if need be), kept with its
/// headers, answered with the empty `response`.
fn otlp_post<M: Message + Default + 'static>(
    requests: Arc<AtomicU64>,
    response: Vec<u8>,
    keep: impl Fn(M, Vec<(String, String)>) + Clone + Send + Sync + 'static,
) -> axum::routing::MethodRouter {
    axum::routing::post(move |headers: axum::http::HeaderMap, bytes: axum::body::Bytes| {
        requests.fetch_add(1, Ordering::Relaxed);
        let decoded = body::<M>(&headers, &bytes);
        let ok = decoded.is_some();
        if let Some(req) = decoded {
            let seen =
                headers.iter().map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned())).collect();
            keep(req, seen);
        }
        async move { protobuf_answer(ok, response) }
    })
}

/// The HTTP/protobuf routes: `POST /v1/traces` and `POST /v1/metrics`.
fn http_routes(stores: Stores) -> axum::Router {
    let (spans, metrics) = (stores.spans, stores.metrics);
    axum::Router::new()
        .route(
            "/v1/traces",
            otlp_post(
                Arc::clone(&stores.requests),
                ExportTraceServiceResponse { partial_success: None }.encode_to_vec(),
                move |req: ExportTraceServiceRequest, _| keep(&spans, req),
            ),
        )
        .route(
            "/v1/metrics",
            otlp_post(
                stores.requests,
                ExportMetricsServiceResponse { partial_success: None }.encode_to_vec(),
                move |req: ExportMetricsServiceRequest, headers| keep_metrics(&metrics, req, headers),
            ),
        )
}

/// Both signals' gRPC services on `server`, taking gzip as the observer may send it.
fn grpc_services(mut server: tonic::transport::Server, stores: Stores) -> tonic::transport::server::Router {
    server
        .add_service(
            TraceServiceServer::new(Grpc(stores.spans)).accept_compressed(tonic::codec::CompressionEncoding::Gzip),
        )
        .add_service(
            MetricsServiceServer::new(GrpcMetrics(stores.metrics))
                .accept_compressed(tonic::codec::CompressionEncoding::Gzip),
        )
}

impl Receiver {
    /// A gRPC receiver (`OTEL_EXPORTER_OTLP_PROTOCOL=grpc`) on a free loopback port.
    pub fn grpc() -> Receiver {
        Receiver::serve(|port, stores| async move {
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            grpc_services(tonic::transport::Server::builder(), stores).serve(addr).await.expect("OTLP gRPC receiver");
        })
    }

    /// Runs `server(port, stores)` on its own runtime thread, on a free loopback port, and
    /// returns once the port accepts connections.
    fn serve<F: std::future::Future<Output = ()> + 'static>(
        server: impl FnOnce(u16, Stores) -> F + Send + 'static,
    ) -> Receiver {
        let port = crate::free_port();
        let stores = Stores::default();
        let s = stores.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().expect("runtime");
            rt.block_on(server(port, s));
        });
        crate::wait_for_port(port);
        Receiver { port, stores }
    }

    /// An HTTP/protobuf sink for benchmarks: answers 200 to every `POST /v1/traces` and counts
    /// the requests, decoding and keeping nothing (what a collector costs is not the
    /// observer's to measure).
    pub fn sink() -> Receiver {
        Receiver::serve(|port, stores| async move {
            let requests = stores.requests;
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

    /// An HTTP/protobuf receiver (`POST /v1/traces`, `POST /v1/metrics`) on a free loopback
    /// port.
    pub fn http() -> Receiver {
        Receiver::serve(|port, stores| async move {
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("bind OTLP HTTP receiver");
            axum::serve(listener, http_routes(stores)).await.expect("OTLP HTTP receiver");
        })
    }

    /// A receiver of both signals over TLS (`https://127.0.0.1:PORT`) with `pki`'s server
    /// certificate, that wants a client certificate its CA signed: gRPC or HTTP/protobuf.
    pub fn tls(protocol: &str, pki: &crate::tls::Pki) -> Receiver {
        let read = |p: &std::path::Path| std::fs::read(p).expect("PKI file");
        let (cert, key, ca) = (read(&pki.server_cert), read(&pki.server_key), read(&pki.ca));
        if protocol == "grpc" {
            return Receiver::serve(move |port, stores| async move {
                let tls = tonic::transport::ServerTlsConfig::new()
                    .identity(tonic::transport::Identity::from_pem(cert, key))
                    .client_ca_root(tonic::transport::Certificate::from_pem(ca));
                grpc_services(tonic::transport::Server::builder().tls_config(tls).expect("server TLS"), stores)
                    .serve(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
                    .await
                    .expect("OTLP gRPC TLS receiver");
            });
        }
        Receiver::serve(move |port, stores| async move {
            use rustls::pki_types::pem::PemObject;
            use rustls::pki_types::{CertificateDer, PrivateKeyDer};
            let _ = rustls::crypto::ring::default_provider().install_default();
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(&ca) {
                roots.add(c.expect("CA PEM")).expect("CA");
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder(Arc::new(roots)).build().expect("client verifier");
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(&cert).map(|c| c.expect("server PEM")).collect();
            let key = PrivateKeyDer::from_pem_slice(&key).expect("server key");
            let config = rustls::ServerConfig::builder()
                .with_client_cert_verifier(verifier)
                .with_single_cert(chain, key)
                .expect("server TLS");
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
            let app = http_routes(stores);
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("bind OTLP TLS receiver");
            loop {
                let Ok((tcp, _)) = listener.accept().await else { continue };
                let (acceptor, app) = (acceptor.clone(), app.clone());
                tokio::spawn(async move {
                    // A client that does not trust us (the wrong-CA test) ends here.
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let service = hyper_util::service::TowerToHyperService::new(app);
                    let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        })
    }

    /// Every metrics request received so far, in order.
    pub fn metrics(&self) -> Vec<MetricsRequest> {
        self.stores.metrics.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Received> {
        self.stores.spans.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// HTTP export requests received so far.
    pub fn requests(&self) -> u64 {
        self.stores.requests.load(Ordering::Relaxed)
    }
}

/// Waits until the receiver holds every span the observers on `ports` exported and none has
/// spans queued: a trace's spans may be split over two export requests, so a trace seen is not
/// yet a trace whole. `run` and node mode alike (`/health`'s `observer.otlp`).
pub fn settle(receiver: &Receiver, ports: &[u16]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (mut exported, mut queued) = (0.0, 0);
        for &port in ports {
            let m = crate::parse_metrics(&crate::http_get(port, "/metrics"));
            exported += crate::value(&m, "eventflux_probe_spans_exported_total", &[]).unwrap_or(-1.0);
            let (_, h) = crate::health(port);
            queued += h["observer"]["otlp"]["queued_spans"].as_u64().unwrap_or(1);
        }
        if queued == 0 && receiver.spans().len() as f64 == exported {
            return;
        }
        assert!(Instant::now() < deadline, "spans still on their way: {exported} exported, {queued} queued");
        std::thread::sleep(Duration::from_millis(100));
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

/// Checks every exemplar of an OpenMetrics exposition against the spans a receiver got; the
/// number checked. Each exemplar names a received trace of its query, and its value is what
/// the histogram counted of that trace:
/// - `query_latency_seconds`: the root span's `eventflux.latency_ns`;
/// - `query_stage_latency_seconds{stage}`: the sum of `eventflux.self_ns` over the trace's
///   spans of that stage;
///
/// and it lies in its bucket: above the series' next lower `le`, at most its own, where the
/// kernel counted batches; its timestamp is a recent span's end.
pub fn assert_exemplars_resolve(openmetrics: &str, spans: &[Received]) -> usize {
    use std::collections::BTreeMap;
    let exemplars = crate::metrics::parse_exemplars(openmetrics);
    let plain: String =
        openmetrics.lines().map(|l| l.split_once(" # ").map_or(l, |(s, _)| s)).fold(String::new(), |mut out, l| {
            out.push_str(l);
            out.push('\n');
            out
        });
    let samples = crate::metrics::parse_metrics(&plain);
    let mut by_trace: BTreeMap<String, Vec<&Received>> = BTreeMap::new();
    for s in spans {
        let hex: String = s.span.trace_id.iter().map(|b| format!("{b:02x}")).collect();
        by_trace.entry(hex).or_default().push(s);
    }
    let label = |s: &crate::metrics::Sample, k: &str| {
        s.labels.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).unwrap_or_default()
    };
    for e in &exemplars {
        let s = &e.sample;
        let trace = by_trace.get(&e.trace_id).unwrap_or_else(|| panic!("exemplar {e:?}: trace never received"));
        let query = label(s, "query_id");
        assert!(
            trace.iter().all(|r| attr(&r.span.attributes, "query.id").as_deref() == Some(query.as_str())),
            "exemplar {e:?}: a trace of another query"
        );
        let value_ns = (e.value * 1e9).round() as i64;
        let counted: i64 = match s.name.as_str() {
            "query_latency_seconds_bucket" => trace
                .iter()
                .find_map(|r| attr(&r.span.attributes, "eventflux.latency_ns"))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("exemplar {e:?}: no root with eventflux.latency_ns")),
            "query_stage_latency_seconds_bucket" => {
                let stage = label(s, "stage");
                trace
                    .iter()
                    .filter(|r| attr(&r.span.attributes, "processor.type").as_deref() == Some(stage.as_str()))
                    .filter_map(|r| attr(&r.span.attributes, "eventflux.self_ns").and_then(|v| v.parse::<i64>().ok()))
                    .sum()
            }
            other => panic!("an exemplar on {other}"),
        };
        assert_eq!(value_ns, counted, "exemplar {e:?}: its value is not what the histogram counted");
        let le = s.value_of("le");
        let others: Vec<(String, String)> = s.labels.iter().filter(|(k, _)| k != "le").cloned().collect();
        let lower = samples
            .iter()
            .filter(|o| {
                o.name == s.name && o.labels.iter().filter(|(k, _)| k != "le").cloned().collect::<Vec<_>>() == others
            })
            .map(|o| o.value_of("le"))
            .filter(|&b| b < le)
            .fold(0.0, f64::max);
        assert!(e.value > lower && e.value <= le, "exemplar {e:?}: outside its bucket ({lower}, {le}]");
        // The kernel counted something there: the cumulative count grows at this bucket (a
        // value summed from spans that the kernel did not count would land in an empty one).
        let cumulative = |bound: f64| {
            samples
                .iter()
                .find(|o| {
                    o.name == s.name
                        && o.value_of("le") == bound
                        && o.labels.iter().filter(|(k, _)| k != "le").cloned().collect::<Vec<_>>() == others
                })
                .map_or(0.0, |o| o.value)
        };
        assert!(cumulative(le) > cumulative(lower), "exemplar {e:?}: in a bucket the kernel counted nothing in");
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        assert!(e.timestamp > now - 600.0 && e.timestamp <= now + 1.0, "exemplar {e:?}: not a recent span's end");
    }
    exemplars.len()
}
