//! S3-compatible object storage on aws-sdk-s3. One client per store: the
//! SDK's HTTP client pools connections, so range GETs reuse them.
use super::{Multipart, ObjectMeta, ObjectStore, Part, S3Settings};
use crate::error::{Error, Result};
use crate::names::join_key;
use aws_sdk_s3::config::{
    retry::RetryConfig, timeout::TimeoutConfig, BehaviorVersion, Credentials, Region,
    RequestChecksumCalculation, ResponseChecksumValidation, SharedCredentialsProvider,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use aws_smithy_types::error::display::DisplayErrorContext;
use bytes::Bytes;
use std::ops::Range;
use std::time::Duration;

pub struct S3Store {
    client: Client,
    bucket: String,
    prefix: String,
    endpoint: String,
    body_timeout: Duration,
    /// Bound on one operation, retries included.
    operation_timeout: Duration,
    max_attempts: u32,
}

/// The SDK's HTTP client without TLS, for `http://` endpoints (a store on
/// the same host or network). The default client loads and parses every
/// system CA certificate when a process first connects, about 40 ms with a
/// cold page cache, which an endpoint without TLS does not need.
fn plain_http_client(max_idle: usize) -> aws_sdk_s3::config::SharedHttpClient {
    use aws_smithy_http_client::{proxy::ProxyConfig, Builder, ConnectorBuilder};
    Builder::new().build_with_connector_fn(move |settings, components| {
        let mut c = ConnectorBuilder::default().pool_max_idle_per_host(max_idle);
        c.set_connector_settings(settings.cloned());
        if let Some(components) = components {
            c.set_sleep_impl(components.sleep_impl());
        }
        c.set_proxy_config(Some(ProxyConfig::from_env()));
        c.build_http()
    })
}

impl S3Store {
    pub fn new(bucket: &str, prefix: &str, s: &S3Settings) -> Result<S3Store> {
        let mut b = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(s.region.clone()))
            .force_path_style(s.path_style)
            .retry_config(RetryConfig::standard().with_max_attempts(s.max_attempts.max(1)))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(s.connect_timeout)
                    .operation_attempt_timeout(s.request_timeout)
                    .operation_timeout(Self::operation_timeout(s))
                    .build(),
            )
            // Our format carries its own checksums; the optional CRC headers
            // are not understood by every S3-compatible store.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        // Idle connections kept: no more than the requests that may run at
        // once (the store's limit), so the sockets a process holds stay bounded.
        let max_idle = s.max_connections.max(1);
        match &s.endpoint {
            Some(ep) if ep.starts_with("http://") => {
                b = b.endpoint_url(ep).http_client(plain_http_client(max_idle));
            }
            ep => {
                use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
                if let Some(ep) = ep {
                    b = b.endpoint_url(ep);
                }
                b = b.http_client(
                    aws_smithy_http_client::Builder::new()
                        .tls_provider(Provider::Rustls(CryptoMode::AwsLc))
                        .pool_max_idle_per_host(max_idle)
                        .build_https(),
                );
            }
        }
        match (&s.access_key_id, &s.secret_access_key) {
            (Some(id), Some(secret)) => {
                b = b.credentials_provider(Credentials::new(
                    id,
                    secret,
                    None,
                    None,
                    "yezzey-settings",
                ));
            }
            (None, None) => {
                // Environment, then shared profile files; deliberately not
                // instance metadata, which would probe the network.
                let chain = aws_config::meta::credentials::CredentialsProviderChain::first_try(
                    "environment",
                    aws_config::environment::EnvironmentVariableCredentialsProvider::new(),
                )
                .or_else(
                    "profile",
                    aws_config::profile::ProfileFileCredentialsProvider::builder().build(),
                );
                b = b.credentials_provider(SharedCredentialsProvider::new(chain));
            }
            _ => {
                return Err(Error::Config(
                    "set both the access key id and the secret access key, or neither".into(),
                ))
            }
        }
        Ok(S3Store {
            client: Client::from_conf(b.build()),
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            endpoint: s
                .endpoint
                .clone()
                .unwrap_or_else(|| format!("AWS S3 ({})", s.region)),
            body_timeout: s.request_timeout,
            operation_timeout: Self::operation_timeout(s),
            max_attempts: s.max_attempts.max(1),
        })
    }

    pub fn describe(&self) -> String {
        format!("s3://{}/{} at {}", self.bucket, self.prefix, self.endpoint)
    }

    /// Every attempt's timeout, plus one connection attempt.
    fn operation_timeout(s: &S3Settings) -> Duration {
        s.request_timeout * s.max_attempts.max(1) + s.connect_timeout
    }

    fn key(&self, name: &str) -> String {
        join_key(&self.prefix, name)
    }

    fn map_err<E>(
        &self,
        what: &str,
        e: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
    ) -> Error
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let ctx = format!("{what} on {}", self.describe());
        match &e {
            SdkError::TimeoutError(_) => {
                Error::Timeout(format!("{ctx}: no answer within the configured timeout"))
            }
            SdkError::DispatchFailure(d) if d.is_timeout() => {
                Error::Timeout(format!("{ctx}: connection timed out"))
            }
            SdkError::DispatchFailure(_) => {
                Error::Store(format!("{ctx}: cannot reach the store: {}", root_cause(&e)))
            }
            SdkError::ServiceError(se) => {
                let status = se.raw().status().as_u16();
                let code = se.err().code().unwrap_or("").to_string();
                let msg = format!(
                    "{ctx}: {} (HTTP {status})",
                    if code.is_empty() { "error" } else { &code }
                );
                match (code.as_str(), status) {
                    ("NoSuchBucket", _) => {
                        Error::NotFound(format!("{ctx}: bucket {:?} does not exist", self.bucket))
                    }
                    ("NoSuchKey" | "NotFound", _) | (_, 404) => Error::NotFound(msg),
                    (
                        "AccessDenied"
                        | "InvalidAccessKeyId"
                        | "SignatureDoesNotMatch"
                        | "Forbidden",
                        _,
                    )
                    | (_, 403) => Error::AccessDenied(msg),
                    _ => Error::Store(msg),
                }
            }
            _ => Error::Store(format!("{ctx}: {}", DisplayErrorContext(&e))),
        }
    }

    /// One GET with a timeout on the body too: the SDK's operation timeout
    /// ends when the headers arrive, and a store that stalls mid-body must
    /// not hang a query. Body failures are retried like request failures,
    /// all within one operation timeout (the SDK retries the request itself).
    async fn get(&self, name: &str, range: String) -> Result<(Bytes, Option<String>)> {
        let key = self.key(name);
        let mut last = None;
        let deadline = tokio::time::Instant::now() + self.operation_timeout;
        let gave_up = || {
            Error::Timeout(format!(
                "GET {key}: no answer within {:?}",
                self.operation_timeout
            ))
        };
        for _ in 0..self.max_attempts {
            let send = self
                .client
                .get_object()
                .bucket(&self.bucket)
                .key(&key)
                .range(&range)
                .send();
            let resp = tokio::time::timeout_at(deadline, send)
                .await
                .map_err(|_| gave_up())?
                .map_err(|e| self.map_err(&format!("GET {key} {range}"), e))?;
            let content_range = resp.content_range().map(str::to_string);
            let body_deadline = deadline.min(tokio::time::Instant::now() + self.body_timeout);
            match tokio::time::timeout_at(body_deadline, resp.body.collect()).await {
                Ok(Ok(body)) => return Ok((body.into_bytes(), content_range)),
                Ok(Err(e)) => last = Some(Error::Store(format!("GET {key}: reading body: {e}"))),
                Err(_) => {
                    last = Some(Error::Timeout(format!(
                        "GET {key}: body stalled for {:?}",
                        self.body_timeout
                    )))
                }
            }
            if tokio::time::Instant::now() >= deadline {
                break;
            }
        }
        Err(last.unwrap_or_else(gave_up))
    }
}

/// The innermost error of a chain ("Connection refused (os error 111)"),
/// which is what an operator needs, not the SDK's nesting.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

impl ObjectStore for S3Store {
    async fn put(&self, name: &str, body: Bytes) -> Result<()> {
        let key = self.key(name);
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(&key)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| self.map_err(&format!("PUT {key}"), e))?;
        Ok(())
    }

    async fn get_range(&self, name: &str, range: Range<u64>) -> Result<Bytes> {
        if range.is_empty() {
            return Ok(Bytes::new());
        }
        let (body, _) = self
            .get(name, format!("bytes={}-{}", range.start, range.end - 1))
            .await?;
        if body.len() as u64 != range.end - range.start {
            return Err(Error::Store(format!(
                "GET {}: asked for {} bytes, got {}",
                self.key(name),
                range.end - range.start,
                body.len()
            )));
        }
        Ok(body)
    }

    async fn get_suffix(&self, name: &str, n: u64) -> Result<(Bytes, u64)> {
        let (body, content_range) = self.get(name, format!("bytes=-{n}")).await?;
        // "bytes 100-199/200"; absent when the whole object came back.
        let total = match content_range.as_deref().and_then(|c| c.rsplit_once('/')) {
            Some((_, t)) => t.parse().map_err(|_| {
                Error::Store(format!(
                    "GET {}: bad Content-Range {content_range:?}",
                    self.key(name)
                ))
            })?,
            None => body.len() as u64,
        };
        Ok((body, total))
    }

    async fn head(&self, name: &str) -> Result<ObjectMeta> {
        let key = self.key(name);
        let r = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(&key)
            .send()
            .await
            .map_err(|e| self.map_err(&format!("HEAD {key}"), e))?;
        Ok(ObjectMeta {
            name: name.to_string(),
            size: r.content_length().unwrap_or(0) as u64,
        })
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let full = self.key(prefix);
        let strip = if self.prefix.is_empty() {
            0
        } else {
            self.prefix.len() + 1
        };
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&full)
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.map_err(&format!("LIST {full}"), e))?;
            for o in page.contents() {
                if let Some(k) = o.key() {
                    out.push(ObjectMeta {
                        name: k[strip.min(k.len())..].to_string(),
                        size: o.size().unwrap_or(0) as u64,
                    });
                }
            }
        }
        Ok(out)
    }

    async fn delete(&self, name: &str) -> Result<()> {
        let key = self.key(name);
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(&key)
            .send()
            .await
            .map_err(|e| self.map_err(&format!("DELETE {key}"), e))?;
        Ok(())
    }

    async fn create_multipart(&self, name: &str) -> Result<Multipart> {
        let key = self.key(name);
        let r = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(&key)
            .send()
            .await
            .map_err(|e| self.map_err(&format!("CreateMultipartUpload {key}"), e))?;
        let upload_id = r
            .upload_id()
            .ok_or_else(|| Error::Store(format!("CreateMultipartUpload {key}: no upload id")))?
            .to_string();
        Ok(Multipart {
            name: name.to_string(),
            upload_id,
        })
    }

    async fn upload_part(&self, mp: &Multipart, number: i32, body: Bytes) -> Result<Part> {
        let key = self.key(&mp.name);
        let r = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(&key)
            .upload_id(&mp.upload_id)
            .part_number(number)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| self.map_err(&format!("UploadPart {key} #{number}"), e))?;
        Ok(Part {
            number,
            etag: r.e_tag().unwrap_or_default().to_string(),
        })
    }

    async fn complete_multipart(&self, mp: &Multipart, mut parts: Vec<Part>) -> Result<()> {
        let key = self.key(&mp.name);
        parts.sort_by_key(|p| p.number);
        let done = CompletedMultipartUpload::builder()
            .set_parts(Some(
                parts
                    .into_iter()
                    .map(|p| {
                        CompletedPart::builder()
                            .part_number(p.number)
                            .e_tag(p.etag)
                            .build()
                    })
                    .collect(),
            ))
            .build();
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(&key)
            .upload_id(&mp.upload_id)
            .multipart_upload(done)
            .send()
            .await
            .map_err(|e| self.map_err(&format!("CompleteMultipartUpload {key}"), e))?;
        Ok(())
    }

    async fn abort_multipart(&self, mp: &Multipart) -> Result<()> {
        let key = self.key(&mp.name);
        self.client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(&key)
            .upload_id(&mp.upload_id)
            .send()
            .await
            .map_err(|e| self.map_err(&format!("AbortMultipartUpload {key}"), e))?;
        Ok(())
    }
}
