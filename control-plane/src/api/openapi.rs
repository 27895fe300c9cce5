//! What ties the API's own extractors and answers into its OpenAPI 3.1 document (`GET
//! /api/v1/openapi.json`, built and served by `api/mod.rs` from its router): their [`aide`]
//! impls, the error body's schema, the role notes and hand-described answers routes carry,
//! and the document's base. aide reads each handler's extractors and answer type; schemars
//! derives the schemas from the same serde attributes that parse and write the values. What
//! a route describes by hand (pages, files, the live stream, raw webhook and run bodies) is
//! named in `api/mod.rs` beside the route.

use aide::generate::GenContext;
use aide::openapi::{Info, OpenApi, Operation, Response, SecurityScheme};
use aide::transform::TransformOperation;
use aide::{OperationInput, OperationOutput};
use axum::Json;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use schemars::JsonSchema;
use serde::Serialize;

use super::{ApiError, ApiJson, ApiPath, ApiQuery, Caller};

/// The body of every error answer.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong, for a program (`code`) and for a person (`message`).
#[derive(Debug, Serialize, JsonSchema)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    pub message: String,
}

/// The kinds of error, one per [`ApiError`] variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    Unauthorized,
    Refused,
    Forbidden,
    NotFound,
    Conflict,
    Invalid,
    RateLimited,
    TooLarge,
    CrossSite,
    UpstreamFailed,
    Unavailable,
    Internal,
}

/// A `201 Created` answer with a JSON body.
#[derive(Debug)]
pub struct Created<T>(pub T);

impl<T: Serialize> IntoResponse for Created<T> {
    fn into_response(self) -> axum::response::Response {
        (StatusCode::CREATED, Json(self.0)).into_response()
    }
}

impl<T: JsonSchema> OperationOutput for Created<T> {
    type Inner = T;

    fn operation_response(ctx: &mut GenContext, operation: &mut Operation) -> Option<Response> {
        Json::<T>::operation_response(ctx, operation)
    }

    fn inferred_responses(
        ctx: &mut GenContext,
        operation: &mut Operation,
    ) -> Vec<(Option<u16>, Response)> {
        at(Some(201), Self::operation_response(ctx, operation))
    }
}

impl OperationOutput for ApiError {
    type Inner = ErrorBody;

    fn operation_response(ctx: &mut GenContext, operation: &mut Operation) -> Option<Response> {
        let mut response = Json::<ErrorBody>::operation_response(ctx, operation)?;
        response.description = "An error: the status says which kind, the body says why".into();
        Some(response)
    }

    /// Documented as the default answer: every route can answer 400, 401, 429 or 500, and
    /// which of the rest a route answers is the handler's to say.
    fn inferred_responses(
        ctx: &mut GenContext,
        operation: &mut Operation,
    ) -> Vec<(Option<u16>, Response)> {
        at(None, Self::operation_response(ctx, operation))
    }
}

impl<T: JsonSchema> OperationInput for ApiJson<T> {
    fn operation_input(ctx: &mut GenContext, operation: &mut Operation) {
        Json::<T>::operation_input(ctx, operation);
    }
}

impl<T: JsonSchema> OperationInput for ApiQuery<T> {
    fn operation_input(ctx: &mut GenContext, operation: &mut Operation) {
        axum::extract::Query::<T>::operation_input(ctx, operation);
    }
}

impl<T: JsonSchema> OperationInput for ApiPath<T> {
    fn operation_input(ctx: &mut GenContext, operation: &mut Operation) {
        axum::extract::Path::<T>::operation_input(ctx, operation);
    }
}

/// A route that takes a caller needs a bearer token (or the dashboard's session cookie).
impl OperationInput for Caller {
    fn operation_input(_ctx: &mut GenContext, operation: &mut Operation) {
        let requirement = [("bearer".to_owned(), Vec::new())].into_iter().collect();
        if !operation.security.contains(&requirement) {
            operation.security.push(requirement);
        }
    }
}

/// A route's summary and the least role it needs (`x-vantage-role`); `None` is a public
/// route.
fn described<'t>(
    op: TransformOperation<'t>,
    summary: &str,
    role: Option<&str>,
) -> TransformOperation<'t> {
    let op = op.summary(summary);
    match role {
        Some(role) => op.with(|mut op| {
            op.inner_mut()
                .extensions
                .insert("x-vantage-role".into(), role.into());
            op
        }),
        None => op,
    }
}

/// A route for viewers and above.
pub fn viewer(summary: &'static str) -> impl FnOnce(TransformOperation) -> TransformOperation {
    move |op| described(op, summary, Some("viewer"))
}

/// A route for operators and admins.
pub fn operator(summary: &'static str) -> impl FnOnce(TransformOperation) -> TransformOperation {
    move |op| described(op, summary, Some("operator"))
}

/// A route for admins.
pub fn admin(summary: &'static str) -> impl FnOnce(TransformOperation) -> TransformOperation {
    move |op| described(op, summary, Some("admin"))
}

/// A route without a token.
pub fn public(summary: &'static str) -> impl FnOnce(TransformOperation) -> TransformOperation {
    move |op| described(op, summary, None)
}

/// The empty document that [`aide::axum::ApiRouter::finish_api_with`] fills from the routes.
///
/// It also sets the schema dialect of the routes about to be built to OpenAPI 3.1's own,
/// JSON Schema 2020-12: aide's default (draft 7) writes a tuple as `items: [..]`, which 3.1's
/// validators refuse (2020-12 writes `prefixItems`). aide resets it once a document is done.
pub fn base() -> OpenApi {
    aide::generate::in_context(|ctx| {
        ctx.schema = schemars::SchemaGenerator::new(
            schemars::generate::SchemaSettings::draft2020_12().with(|settings| {
                settings.inline_subschemas = false;
                settings.definitions_path = "#/components/schemas/".into();
            }),
        );
    });
    OpenApi {
        info: Info {
            title: "Vantage API".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            ..Info::default()
        },
        ..OpenApi::default()
    }
}

/// What the routes do not say themselves: the bearer scheme.
pub fn finish(api: aide::transform::TransformOpenApi) -> aide::transform::TransformOpenApi {
    api.security_scheme(
        "bearer",
        SecurityScheme::Http {
            scheme: "bearer".into(),
            bearer_format: None,
            description: Some(
                "An API token (`vantage api-token create`); the dashboard signs in with a session cookie instead".into(),
            ),
            extensions: Default::default(),
        },
    )
}

/// A Prometheus text exposition (`/metrics`, `/metrics/checks`).
#[derive(Debug)]
pub struct Exposition(pub String);

/// The exposition format's media type.
const EXPOSITION: &str = "text/plain; version=0.0.4; charset=utf-8";

impl IntoResponse for Exposition {
    fn into_response(self) -> axum::response::Response {
        ([(axum::http::header::CONTENT_TYPE, EXPOSITION)], self.0).into_response()
    }
}

impl OperationOutput for Exposition {
    type Inner = String;

    fn operation_response(_ctx: &mut GenContext, _operation: &mut Operation) -> Option<Response> {
        Some(text_response(EXPOSITION, "Prometheus text exposition"))
    }

    fn inferred_responses(
        ctx: &mut GenContext,
        operation: &mut Operation,
    ) -> Vec<(Option<u16>, Response)> {
        at(Some(200), Self::operation_response(ctx, operation))
    }
}

/// `response`, if any, as the answer with `status` (`None`: the default answer).
fn at(status: Option<u16>, response: Option<Response>) -> Vec<(Option<u16>, Response)> {
    response.map(|r| vec![(status, r)]).unwrap_or_default()
}

/// A response whose body is text (or bytes) of `media_type`.
fn text_response(media_type: &str, description: &str) -> Response {
    let mut response = Response {
        description: description.into(),
        ..Response::default()
    };
    response.content.insert(
        media_type.into(),
        aide::openapi::MediaType {
            schema: Some(aide::openapi::SchemaObject {
                json_schema: schemars::json_schema!({ "type": "string" }),
                example: None,
                external_docs: None,
            }),
            ..Default::default()
        },
    );
    response
}

/// Documents a route whose handler builds its own answer (a page, a file, a stream): `status`
/// with a body of `media_type`.
pub fn answers<'t>(
    op: TransformOperation<'t>,
    status: u16,
    media_type: &str,
    description: &str,
) -> TransformOperation<'t> {
    op.with(|mut op| {
        let responses = op
            .inner_mut()
            .responses
            .get_or_insert_with(Default::default);
        let response = if media_type.is_empty() {
            Response {
                description: description.into(),
                ..Response::default()
            }
        } else {
            text_response(media_type, description)
        };
        responses.responses.insert(
            aide::openapi::StatusCode::Code(status),
            aide::openapi::ReferenceOr::Item(response),
        );
        op
    })
}

/// Documents a JSON request body the handler reads itself (webhooks check a signature over
/// the raw bytes before parsing them).
pub fn json_body(op: TransformOperation) -> TransformOperation {
    op.input::<Json<serde_json::Value>>()
}

/// Documents an optional JSON body of `T` for a handler that reads the raw bytes (an empty
/// body means the defaults).
pub fn optional_json_body<T: JsonSchema>(op: TransformOperation) -> TransformOperation {
    op.with(|mut op| {
        op.inner_mut().request_body = None;
        op
    })
    .input::<Json<T>>()
    .with(|mut op| {
        if let Some(aide::openapi::ReferenceOr::Item(body)) = &mut op.inner_mut().request_body {
            body.required = false;
        }
        op
    })
}

/// A route that answers without credentials too (`security: [{}, {bearer: []}]`).
pub fn optional_auth(mut op: TransformOperation) -> TransformOperation {
    let security = &mut op.inner_mut().security;
    if !security.iter().any(|requirement| requirement.is_empty()) {
        security.insert(0, Default::default());
    }
    op
}
