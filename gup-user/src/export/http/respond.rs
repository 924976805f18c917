//! One request, from hyper's parsed head to hyper's response. What needs
//! no work is answered at once; the rest (a page that reads the
//! collector, a bcrypt check) is admitted (the client's share, then a
//! render slot within the wait) and run on a blocking thread.

use std::{convert::Infallible, future::Future, pin::Pin, sync::Arc};

use http_body_util::Full;
use hyper::{
    body::{Bytes, Incoming},
    header::{HeaderName, HeaderValue},
};
use tokio::sync::Semaphore;

use super::{
    flights::{self, Flights, Role},
    gzip,
    limits::{Limits, PeerKey},
    Handler, Request, Response, ServerConfig,
};
use crate::export::webconfig::Security;

/// Response bodies: whole, so hyper always sends `Content-Length`.
pub type Body = Full<Bytes>;

/// What every connection's requests share.
pub struct Shared {
    /// The routes.
    pub handler: Arc<dyn Handler>,
    /// Connection and request counts.
    pub limits: Arc<Limits>,
    /// Render slots (`max_renders`), handed out first come, first served.
    pub renders: Arc<Semaphore>,
    /// The limits.
    pub cfg: ServerConfig,
    /// Renders in flight that later requests for the same page share.
    pub flights: Flights,
}

/// What one connection's requests share.
pub struct Connection {
    /// Server-wide state.
    pub shared: Arc<Shared>,
    /// TLS and basic auth as they were when the connection was accepted.
    pub security: Option<Arc<Security>>,
    /// The client, for its share of the limits.
    pub peer: PeerKey,
}

/// hyper's service function: boxed so the connection can be polled
/// without pinning (and taken apart afterwards).
pub fn service(
    req: hyper::Request<Incoming>,
    conn: Arc<Connection>,
) -> Pin<Box<dyn Future<Output = Result<hyper::Response<Body>, Infallible>> + Send>> {
    Box::pin(async move {
        // The body is never read: GET and HEAD have none, and anything else
        // is refused. hyper closes the connection instead of reading it.
        let (parts, _body) = req.into_parts();
        let request = Request::from_parts(&parts.method, &parts.uri, &parts.headers);
        // Decided per request, after the shared render: scrapers that
        // share one render may differ in what they accept.
        let gzip = conn.shared.handler.compresses(&request).then(|| gzip::accepts_gzip(request.header("accept-encoding")));
        let resp = answer(request, &conn).await;
        let resp = match gzip {
            Some(accepted) => gzip::negotiate(resp, accepted),
            None => resp,
        };
        Ok(to_hyper(resp, conn.security.as_deref()))
    })
}

fn busy(why: &str) -> Response {
    let mut r = Response::text(503, format!("{why}; retry in a second\n"));
    r.headers.push(("Retry-After", "1".into()));
    r
}

async fn answer(request: Request, conn: &Connection) -> Response {
    let shared = &conn.shared;
    // hyper also accepts authority-form (`CONNECT host:port`) and `*`.
    if !request.path.starts_with('/') {
        return Response::text(400, "request target must be a path\n");
    }
    // `rate_limit` first, as the toolkit does: a flood is turned away
    // before it costs a bcrypt check.
    if let Some(Err(wait)) = conn.security.as_ref().map(|s| s.admit()) {
        let mut r = Response::text(429, "Too Many Requests (rate_limit in the web config)\n");
        r.headers.push(("Retry-After", wait.as_secs().max(1).to_string()));
        return r;
    }
    // What needs neither bcrypt nor the collector is answered at once,
    // on this thread: refusals, 404s and /healthz cannot be shed.
    let quick = conn.security.as_ref().map_or(Some(true), |s| s.authorize_quick(request.header("authorization")));
    match quick {
        Some(false) => return unauthorized(),
        Some(true) => {
            if let Some(r) = refuse_method(&request) {
                return r;
            }
            if !shared.handler.renders(&request) {
                let handler = &*shared.handler;
                return std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler.handle(&request)))
                    .unwrap_or_else(|_| Response::text(500, "internal error\n"));
            }
        }
        // Only bcrypt can tell: that is work, as a render is.
        None => {}
    }
    let Some(_admitted) = shared.limits.admit_request(conn.peer) else {
        return busy("busy: too many requests from your address at once");
    };
    // Authorized (quick) requests for a shared page join its render.
    let key = if quick == Some(true) { shared.handler.coalesce(&request) } else { None };
    let leader = match key.map(|k| shared.flights.join(k)) {
        Some(Role::Follow(rx)) => {
            return flights::follow(rx).await.unwrap_or_else(|| busy("busy: the render this request waited for was abandoned"))
        }
        Some(Role::Lead(l)) => Some(l),
        None => None,
    };
    let resp = render(request, conn).await;
    if let Some(l) = leader {
        l.publish(&resp);
    }
    resp
}

/// A render slot within the wait, then the work on a blocking thread.
async fn render(request: Request, conn: &Connection) -> Response {
    let shared = &conn.shared;
    let permit =
        match tokio::time::timeout(shared.cfg.render_wait, Arc::clone(&shared.renders).acquire_owned()).await {
            Ok(Ok(p)) => p,
            // Waited too long (or the server is stopping): shed.
            _ => return busy("busy: too many requests at once"),
        };
    let handler = Arc::clone(&shared.handler);
    let security = conn.security.clone();
    let job = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        decide(&request, &*handler, security.as_deref())
    });
    // A panicking route ends its blocking task, not the server: 500.
    job.await.unwrap_or_else(|_| Response::text(500, "internal error\n"))
}

fn unauthorized() -> Response {
    let mut r = Response::text(401, "Unauthorized: this endpoint needs basic-auth credentials (see --web-config)\n");
    r.headers.push(("WWW-Authenticate", crate::export::webconfig::CHALLENGE.into()));
    r
}

fn refuse_method(req: &Request) -> Option<Response> {
    if req.method == "GET" || req.method == "HEAD" {
        return None;
    }
    let mut r = Response::text(405, "GET or HEAD only\n");
    r.headers.push(("Allow", "GET, HEAD".into()));
    Some(r)
}

/// Credentials, method, route: in that order, so nothing about the server
/// (not even which methods it allows) is told before the credentials.
pub fn decide(req: &Request, handler: &dyn Handler, security: Option<&Security>) -> Response {
    if !security.is_none_or(|s| s.authorize(req.header("authorization"))) {
        return unauthorized();
    }
    refuse_method(req).unwrap_or_else(|| handler.handle(req))
}

/// Our response as hyper's, with the headers every response carries.
pub fn to_hyper(resp: Response, security: Option<&Security>) -> hyper::Response<Body> {
    let status = hyper::StatusCode::from_u16(resp.status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    let len = resp.body.len();
    let mut out = hyper::Response::new(Full::new(Bytes::from(resp.body)));
    *out.status_mut() = status;
    let h = out.headers_mut();
    h.insert(hyper::header::CONTENT_TYPE, HeaderValue::from_static(resp.content_type));
    // Explicit, for HEAD too (hyper then sends no body): a client never
    // sees a chunked reply.
    h.insert(hyper::header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(hyper::header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(hyper::header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    let extra = resp.headers.iter().chain(security.map_or(&[][..], |s| s.headers()));
    for (name, value) in extra {
        // The names are ours or checked by the web config; a value that
        // is not a valid header is left out rather than sent broken.
        if let (Ok(n), Ok(v)) = (HeaderName::try_from(*name), HeaderValue::try_from(value.as_str())) {
            h.append(n, v);
        }
    }
    out
}
