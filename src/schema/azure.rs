//! A client of the Azure Schema Registry REST API (a schema group on an
//! Event Hubs namespace, api-version 2022-10, as the Python
//! `azure-schemaregistry` 1.x speaks it), authenticated by an Entra ID
//! credential (scope `https://eventhubs.azure.net/.default`).
//!
//! | call | used for |
//! |---|---|
//! | `GET /$schemaGroups/$schemas/{id}` | a writer schema, by the id in a content type |
//! | `PUT /$schemaGroups/{group}/schemas/{name}` | registering (the group's compatibility rule may refuse: 400) |
//! | `POST /$schemaGroups/{group}/schemas/{name}:get-id` | the id of an already registered schema |
//!
//! A schema's name is the full name of its top-level type, as the Python
//! Avro encoder registers it. Ids come back in the `Schema-Id` header.

use super::SchemaError;
use super::http::{Status, body_text, not_found, status, unexpected, unreachable};
use azure_core::credentials::TokenCredential;
use std::sync::Arc;

const API_VERSION: &str = "2022-10";
const SCOPE: &str = "https://eventhubs.azure.net/.default";
const AVRO: &str = "application/json; serialization=Avro";
/// The service's error codes for a schema or group it does not have.
const NOT_FOUND: &[&str] = &["ItemNotFound", "SchemaNotFound", "GroupNotFound", "NotFound"];

pub(super) struct Azure {
    pub registry: String,
    pub http: reqwest::Client,
    pub endpoint: reqwest::Url,
    pub group: String,
    pub credential: Arc<dyn TokenCredential>,
}

impl Azure {
    fn url(&self, segments: &[&str]) -> reqwest::Url {
        let mut u = self.endpoint.clone();
        if let Ok(mut p) = u.path_segments_mut() {
            p.pop_if_empty().extend(segments);
        }
        u.query_pairs_mut().append_pair("api-version", API_VERSION);
        u
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, SchemaError> {
        let token = self.credential.get_token(&[SCOPE], None).await.map_err(|e| SchemaError::Auth {
            registry: self.registry.clone(),
            status: 0,
            reason: format!("no Entra ID token: {}", crate::text::clip(&e.to_string(), 512)),
        })?;
        req.bearer_auth(token.token.secret()).send().await.map_err(|e| unreachable(&self.registry, &e))
    }

    fn id_of(&self, resp: &reqwest::Response) -> Result<String, SchemaError> {
        resp.headers()
            .get("schema-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .map(str::to_string)
            .ok_or_else(|| SchemaError::Refused {
                registry: self.registry.clone(),
                status: resp.status().as_u16(),
                reason: "the answer has no Schema-Id header".into(),
            })
    }

    /// The text of schema `id`.
    pub async fn schema_by_id(&self, id: &str) -> Result<String, SchemaError> {
        let req = self.http.get(self.url(&["$schemaGroups", "$schemas", id])).header("accept", AVRO);
        let resp = self.send(req).await?;
        match status(resp.status().as_u16()) {
            Status::Ok => Ok(body_text_full(resp).await.map_err(|e| unreachable(&self.registry, &e))?),
            Status::NotFound => {
                not_found(&self.registry, resp, NOT_FOUND).await?;
                Err(SchemaError::Unknown { registry: self.registry.clone(), id: id.into(), hint: None })
            }
            _ => Err(unexpected(&self.registry, resp).await),
        }
    }

    /// Registers `schema` as `name` in the group (or finds it there) and
    /// returns its id.
    pub async fn register(&self, name: &str, schema: &str) -> Result<String, SchemaError> {
        let url = self.url(&["$schemaGroups", &self.group, "schemas", name]);
        let resp = self.send(self.http.put(url).header("content-type", AVRO).body(schema.to_string())).await?;
        match status(resp.status().as_u16()) {
            Status::Ok => self.id_of(&resp),
            Status::Refused => Err(SchemaError::Incompatible {
                id: None,
                reason: format!("schema group {:?} refuses {name}: {}", self.group, body_text(resp).await),
            }),
            _ => Err(unexpected(&self.registry, resp).await),
        }
    }

    /// The id of `schema` when it is registered as `name` in the group.
    pub async fn lookup(&self, name: &str, schema: &str) -> Result<Option<String>, SchemaError> {
        let url = self.url(&["$schemaGroups", &self.group, "schemas", &format!("{name}:get-id")]);
        let resp = self.send(self.http.post(url).header("content-type", AVRO).body(schema.to_string())).await?;
        match status(resp.status().as_u16()) {
            Status::Ok => self.id_of(&resp).map(Some),
            Status::NotFound => not_found(&self.registry, resp, NOT_FOUND).await.map(|()| None),
            _ => Err(unexpected(&self.registry, resp).await),
        }
    }
}

/// A schema's whole text (schemas are small; the client's timeout bounds it).
async fn body_text_full(resp: reqwest::Response) -> Result<String, reqwest::Error> {
    resp.text().await
}
