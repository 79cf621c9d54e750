//! One request's way through the server: admission (who is calling, how many may wait),
//! reading the body within its limits, dispatch to the REST, Binary or websocket handlers,
//! and the answer to a request refused early.

use super::audit::{AuditEntry, AuditLog, NamedResource};
use super::caller::{self, PeerCertificate, Principal};
use super::reply::{refused, Reply};
use super::request_body::read_body;
use super::{binary, connections, interaction, trace, ui, websocket};
use super::{Call, FhirServer, Identity, IdentityKind, ResponseBody};
use crate::format::Format;
use crate::search::parse_query_string;
use crate::{Error, Result};
use bytes::Bytes;
use dsf_core::{ErrorChain, Thumbprint};
use http::{Method, Request, Response};
use std::sync::Arc;
use std::time::{Duration, Instant};

impl FhirServer {
    /// Answers one request whose extensions say who sent it (see [`caller`]): a websocket
    /// upgrade on the websocket path, the REST API elsewhere. Writes its audit record and
    /// records its latency, when those are on.
    pub(crate) async fn respond<B>(
        self: Arc<Self>,
        req: Request<B>,
        slot: Option<Arc<connections::Slot>>,
    ) -> Response<ResponseBody>
    where
        B: hyper::body::Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        if self.config.audit.is_none() && self.metrics.get().is_none() {
            return self.answer(req, slot).await;
        }
        let started = Instant::now();
        let Some(audit) = &self.config.audit else {
            let interaction = self.target_of(req.method(), req.uri()).interaction;
            let response = self.answer(req, slot).await;
            self.observe(interaction, &response, started.elapsed());
            return response;
        };
        // What the record needs of the request, which itself goes to the handling. A parsed
        // URI's clone shares its bytes.
        let asked = Asked {
            uri: req.uri().clone(),
            method: req.method().clone(),
            peer: req.extensions().get::<caller::PeerAddress>().map(|p| p.0),
            started,
        };
        if trace::restart() {
            // A connection of this server's own listener, traced as a whole: the notes stay
            // where they were made (see `trace::finish`).
            let response = self.answer(req, slot).await;
            trace::finish(|noted, head| self.record(audit, &asked, &response, noted, head));
            response
        } else {
            // Boxed: the handling's future is large and the trace's wrapper is moved before
            // it runs; a box moves a pointer instead of copying it all each time.
            let (response, mut trace) = trace::traced(Box::pin(self.answer(req, slot))).await;
            self.record(audit, &asked, &response, &trace.noted, &mut trace.head);
            response
        }
    }

    /// Records the answer to `asked` in the metrics and the audit log. Not inlined into
    /// [`FhirServer::respond`]: kept apart, its code is one piece for a request to fetch, and
    /// the request's future carries only what it needs across the handling.
    #[inline(never)]
    fn record(
        &self,
        audit: &AuditLog,
        asked: &Asked,
        response: &Response<ResponseBody>,
        noted: &trace::Noted,
        head: &mut trace::RecordHead,
    ) {
        let elapsed = asked.started.elapsed();
        // The router's reading of the path where the request got that far; the path read
        // again only where it did not (refused early, a websocket, a page).
        let routed = noted.routed.and_then(|routed| {
            let named = self.path_below(asked.uri.path())?.get(..routed.named)?;
            Some((routed.interaction, clipped_reference(named)))
        });
        let (interaction, named) = match routed {
            Some((interaction, "")) => (interaction, NamedResource::None),
            Some((interaction, named)) => (interaction, NamedResource::Reference(named)),
            None => {
                let target = self.target_of(&asked.method, &asked.uri);
                let named = match target.resource_type {
                    Some(resource_type) => NamedResource::Path(resource_type, target.id),
                    None => NamedResource::None,
                };
                (target.interaction, named)
            }
        };
        self.observe(interaction, response, elapsed);
        // Only writes answer with a `Location` (a create's new id): reads skip the lookup.
        let location = (asked.method != Method::GET && asked.method != Method::HEAD)
            .then(|| response.headers().get(http::header::LOCATION))
            .flatten()
            .and_then(|l| l.to_str().ok())
            .and_then(|l| l.strip_prefix(self.config.base_url.as_str()));
        let resource = match location {
            Some(location) => NamedResource::Reference(location.trim_matches('/')),
            None => named,
        };
        audit.write(
            &AuditEntry {
                time: asked.started + elapsed,
                peer: asked.peer,
                noted,
                interaction: interaction.name(),
                method: &asked.method,
                resource,
                parameters: parameter_names(asked.uri.query()),
                status: response.status().as_u16(),
                duration: elapsed,
            },
            head,
        )
    }

    /// What a request to `uri` asks for, as its metrics and audit record name it.
    fn target_of<'a>(&self, method: &Method, uri: &'a http::Uri) -> interaction::Target<'a> {
        let path = uri.path();
        interaction::classify(
            method,
            self.path_below(path),
            self.is_websocket_request(path),
        )
    }

    fn observe(
        &self,
        interaction: interaction::Interaction,
        response: &Response<ResponseBody>,
        elapsed: Duration,
    ) {
        if let Some(metrics) = self.metrics.get() {
            metrics.observe(interaction, response.status().as_u16(), elapsed);
        }
    }

    /// [`FhirServer::respond`] without the record keeping. Borrows the server: a clone's
    /// count would be one more write per request to memory that all threads share.
    async fn answer<B>(
        self: &Arc<Self>,
        req: Request<B>,
        slot: Option<Arc<connections::Slot>>,
    ) -> Response<ResponseBody>
    where
        B: hyper::body::Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        let certificate = match caller::client_certificate(
            self.config.forwarded_certificates.as_ref(),
            req.headers(),
            req.extensions(),
        ) {
            Ok(certificate) => certificate,
            // Browsers and API clients of users who log in with OpenID Connect.
            Err(e) => return self.respond_without_certificate(req, e).await,
        };
        if self.is_websocket_request(req.uri().path()) {
            trace::certificate(certificate.thumbprint.clone());
            self.clone().upgrade(certificate, req, slot).await
        } else {
            let response = self.handle_from(&certificate, req).await;
            // Noted after the handling, which only borrows it: moved, not copied.
            trace::certificate(certificate.thumbprint);
            response
        }
    }

    /// `path` below the base URL's path, without '/' at either end (`Task/1`, or empty for
    /// the base itself); `None` outside it.
    pub(crate) fn path_below<'a>(&self, path: &'a str) -> Option<&'a str> {
        path.strip_prefix(self.context_path.as_str())
            .filter(|rest| rest.is_empty() || rest.starts_with('/'))
            .map(|rest| rest.trim_matches('/'))
    }

    fn is_binary_path(&self, path: &str) -> bool {
        path.strip_prefix(self.context_path.as_str())
            .and_then(|rest| rest.strip_prefix("/Binary/"))
            .is_some()
    }

    fn is_websocket_request(&self, path: &str) -> bool {
        path.strip_prefix(self.context_path.as_str())
            .and_then(|rest| rest.strip_prefix('/'))
            .is_some_and(|rest| rest.trim_end_matches('/') == websocket::WEBSOCKET_PATH)
    }

    /// Handles one request from the holder of `thumbprint`. The body may be hyper's
    /// incoming body or any other (e.g. `Full<Bytes>` when there is no transport). Role
    /// configuration rules matching by e-mail need the certificate: see
    /// [`FhirServer::handle_from`].
    pub async fn handle<B>(
        &self,
        thumbprint: &Thumbprint,
        req: Request<B>,
    ) -> Response<ResponseBody>
    where
        B: hyper::body::Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        self.handle_from(&PeerCertificate::new(thumbprint.clone()), req)
            .await
    }

    /// Handles one request from the holder of `certificate`.
    pub async fn handle_from<B>(
        &self,
        certificate: &PeerCertificate,
        req: Request<B>,
    ) -> Response<ResponseBody>
    where
        B: hyper::body::Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        let identity = match self.identity_of(certificate).await {
            Ok(identity) => identity,
            Err(e) => return refused(req.headers(), &e),
        };
        self.handle_as(
            identity,
            Principal::Certificate(&certificate.thumbprint),
            req,
        )
        .await
    }

    /// Handles one request of `identity`, whom `principal` authenticated.
    pub(crate) async fn handle_as<B>(
        &self,
        identity: Arc<Identity>,
        principal: Principal<'_>,
        req: Request<B>,
    ) -> Response<ResponseBody>
    where
        B: hyper::body::Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        trace::identity(&identity);
        let (parts, body) = req.into_parts();
        let accept = parts
            .headers
            .get(http::header::ACCEPT)
            .and_then(|v| v.to_str().ok());
        // Who asks, and their turn, come before any work on the request: a remote
        // organisation's requests beyond its share wait here at no cost.
        let admitted = match self.admit(identity, parts.uri.query()).await {
            Ok(admitted) => admitted,
            Err(e) => return refused(&parts.headers, &e),
        };
        let query = parse_query_string(parts.uri.query().unwrap_or(""));
        let format_param = query
            .iter()
            .find(|(k, _)| k == "_format")
            .map(|(_, v)| v.clone());
        let pretty = query.iter().any(|(k, v)| k == "_pretty" && v == "true");
        let html = ui::wants_html(format_param.as_deref(), accept);
        let format = match Format::negotiate(format_param.as_deref(), accept) {
            Ok(f) => f,
            // A page is rendered from the JSON.
            Err(_) if html => Format::Json,
            // A Binary is also read as its raw content, in whatever type it has: the read
            // decides (see `binary`), and errors go out as JSON.
            Err(_) if format_param.is_none() && self.is_binary_path(parts.uri.path()) => {
                Format::Json
            }
            Err(e) => return Reply::error(&e).render(Format::Json, pretty),
        };
        let action = self
            .path_below(parts.uri.path())
            .and_then(|path| path.strip_prefix(ui::ACTION_PREFIX))
            .map(str::to_owned);
        if let Some(action) = action {
            // Named as a page's action, not as what the action asks of the router.
            trace::routed(interaction::Interaction::Page, 0);
            return self
                .ui_action(&admitted.identity, &principal, &action, parts, body)
                .await;
        }
        // Only a page needs to know where it is.
        let page_at = html.then(|| {
            let path = self.path_below(parts.uri.path()).unwrap_or("");
            (path.to_owned(), query.clone())
        });
        let identity = admitted.identity.clone();
        let reply = match self.dispatch(&identity, parts, body, query).await {
            Ok(reply) => reply,
            Err(e) => {
                if e.status() >= 500 {
                    tracing::error!(error = %ErrorChain(&e), "request failed");
                }
                Reply::error(&e)
            }
        };
        if reply.status.is_client_error() {
            admitted.hold_turn(self.config.connections.refusal_penalty);
        } else if let Some(turn) = &admitted.turn {
            turn.succeeded();
        }
        let response = match &page_at {
            Some((path, query)) => self.page(reply, &identity, &principal, path, query).await,
            None => reply.render(format, pretty),
        };
        if hyper::body::Body::size_hint(response.body())
            .exact()
            .is_some_and(|len| len > LARGE_RESPONSE_BYTES)
        {
            self.trimmer.note_large_allocation();
        }
        response
    }

    /// Resolves the caller and waits for its turn; then refuses, before decoding anything, a
    /// query string with more parts than any search may use.
    async fn admit(&self, identity: Arc<Identity>, query: Option<&str>) -> Result<Admitted> {
        let turn = match identity.kind {
            IdentityKind::RemoteOrganization => {
                self.peer_turns
                    .take(
                        &identity.organization_identifier,
                        self.config.connections.max_requests_per_peer,
                    )
                    .await
            }
            IdentityKind::LocalOrganization | IdentityKind::Practitioner => None,
        };
        let admitted = Admitted { identity, turn };
        let mut parts = query.unwrap_or("").split('&').filter(|p| !p.is_empty());
        if let Some(excess) = parts.nth(MAX_QUERY_PARTS) {
            admitted.hold_turn(self.config.connections.refusal_penalty);
            // Named as sent (not decoded): this check runs before any decoding.
            let name: String = excess
                .split('=')
                .next()
                .unwrap_or("")
                .chars()
                .take(64)
                .collect();
            return Err(Error::Invalid(format!(
                "search parameter {name}: more than {MAX_QUERY_PARTS} query parameters in one request"
            )));
        }
        Ok(admitted)
    }

    async fn dispatch<B>(
        &self,
        identity: &Identity,
        parts: http::request::Parts,
        mut body: B,
        query: Vec<(String, String)>,
    ) -> Result<Reply>
    where
        B: hyper::body::Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        let Some(path) = self.path_below(parts.uri.path()) else {
            return Err(Error::NotFound(format!(
                "no FHIR API at {}",
                parts.uri.path()
            )));
        };
        let path = path.to_owned();
        match self
            .raw_upload(identity, &parts, &path, &query, &mut body)
            .await?
        {
            Some(binary::UploadStart::Done(reply)) => return Ok(reply),
            Some(binary::UploadStart::Small(call)) => return self.route(&call).await,
            None => {}
        }
        let body = read_body(body, self.config.max_body_bytes)
            .await
            .inspect_err(|e| {
                if matches!(e, Error::PayloadTooLarge(_)) {
                    self.trimmer.note_large_allocation();
                }
            })?;
        if body.len() > INLINE_PARSE_BYTES {
            self.trimmer.note_large_allocation();
        }
        // HEAD is answered as GET; hyper sends the headers (Content-Length included) and
        // leaves the body out.
        let method = if parts.method == Method::HEAD {
            Method::GET
        } else {
            parts.method
        };
        let call = Call {
            identity,
            method,
            path,
            query,
            headers: parts.headers,
            body,
        };
        tracing::debug!(identity = identity.name(), method = %call.method, path = %call.path, "request");
        self.route(&call).await
    }
}

/// What a request's record needs of it once it is answered.
struct Asked {
    uri: http::Uri,
    method: Method,
    peer: Option<std::net::SocketAddr>,
    started: Instant,
}

/// Longest resource reference a record keeps from a path: a type, an id and a version of 64
/// characters each, and room to spare.
const MAX_REFERENCE: usize = 256;

/// At most [`MAX_REFERENCE`] bytes of `reference`, cut between characters.
fn clipped_reference(reference: &str) -> &str {
    let mut end = reference.len().min(MAX_REFERENCE);
    while !reference.is_char_boundary(end) {
        end -= 1;
    }
    &reference[..end]
}

/// Names of the query parameters (sorted, each once, at most 32 of at most 64 characters):
/// what an audit record tells of a search, without its values.
fn parameter_names(query: Option<&str>) -> Vec<String> {
    // Most requests (reads above all) have no query: nothing to split or sort.
    let Some(query) = query.filter(|q| !q.is_empty()) else {
        return Vec::new();
    };
    let mut names: Vec<String> = query
        .split('&')
        .filter_map(|part| part.split('=').next())
        .filter(|name| !name.is_empty())
        .map(|name| {
            percent_encoding::percent_decode_str(name)
                .decode_utf8_lossy()
                .chars()
                .take(64)
                .collect()
        })
        .collect();
    names.sort_unstable();
    names.dedup();
    names.truncate(32);
    names
}

/// Most `&`-separated parts a query string may have: the search limits
/// ([`crate::search::MAX_PARAMETERS`]) plus result and format parameters, with room to spare.
const MAX_QUERY_PARTS: usize = 64;

/// A caller allowed to proceed, holding its turn until the request is answered.
struct Admitted {
    identity: Arc<Identity>,
    turn: Option<connections::Turn>,
}

impl Admitted {
    /// Keeps the caller's turn taken after a refused answer goes out: `base`, doubled for
    /// each refusal in a row before (see [`connections::Turn::penalty`]).
    fn hold_turn(self, base: Duration) {
        if let Some(turn) = self.turn {
            let penalty = turn.penalty(base);
            tokio::spawn(async move {
                tokio::time::sleep(penalty).await;
                drop(turn);
            });
        }
    }
}

/// Answers larger than this (search pages of big resources) count as large allocations for
/// the memory trimmer.
const LARGE_RESPONSE_BYTES: u64 = 1024 * 1024;

/// Bodies up to this size are parsed where the request runs; larger ones on the blocking
/// pool, a few at a time (see [`FhirServer::parse_body`]).
const INLINE_PARSE_BYTES: usize = 32 * 1024;

impl FhirServer {
    /// Parses the request body as a resource. A large body is parsed on the blocking pool,
    /// at most half as many at once as there are cores, so that requests with large bodies
    /// wait for each other rather than hold up the async workers everyone else needs.
    pub(crate) async fn parse_body(&self, call: &Call<'_>) -> Result<serde_json::Value> {
        let format = call.body_format()?;
        if call.body.len() <= INLINE_PARSE_BYTES {
            return crate::format::parse_resource(&call.body, format);
        }
        let _turn = self.large_parses.acquire().await.map_err(Error::storage)?;
        let body = call.body.clone();
        tokio::task::spawn_blocking(move || crate::format::parse_resource(&body, format))
            .await
            .map_err(|e| Error::storage_fault(format!("parser task failed: {e}")))?
    }
}
