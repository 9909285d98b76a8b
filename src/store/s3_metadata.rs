//! Changing an S3 object's metadata without moving its bytes: a CopyObject of
//! the object onto itself with `x-amz-metadata-directive: REPLACE`, the way
//! s3fs applies chmod, chown and utimens. The store client has no such call,
//! so the request is signed here with its SigV4 signer and credentials.
//!
//! The copy is conditional on the ETag the caller saw (`x-amz-copy-source-if-
//! match`), so a change never lands on bytes another writer put meanwhile.
//! CopyObject takes objects up to 5 GiB; larger ones are refused with a clear
//! error (a multipart copy would be needed).

use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey, AwsAuthorizer};
use object_store::client::{
    HttpClient, HttpConnector, HttpRequest, HttpRequestBody, ReqwestConnector,
};
use object_store::{Attribute, Attributes, ClientOptions};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use crate::error::error_chain;
use crate::store::StoreError;

/// The largest object one CopyObject takes.
pub const MAX_COPY_SIZE: u64 = 5 << 30;

/// Bytes a key keeps unencoded in a URL path: S3's unreserved characters and
/// the separator.
const KEY_ENCODE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'/');

/// Why a metadata change failed.
#[derive(Debug, thiserror::Error)]
pub enum MetadataCopyError {
    /// The object is not the version the change was for (412).
    #[error("the object changed in the store")]
    Changed,
    #[error("the object is gone from the store")]
    Missing,
    #[error("{0} is over the 5 GiB that one copy takes; its metadata cannot change in place")]
    TooLarge(String),
    #[error("metadata copy of {key}: {why}")]
    Failed { key: String, why: String },
}

pub struct S3MetadataCopier {
    http: HttpClient,
    credentials: object_store::aws::AwsCredentialProvider,
    region: String,
    /// `{endpoint}/{bucket}`: requests are path style, as the store client's.
    bucket_url: String,
    bucket: String,
    /// The mount's prefix in the bucket, with a trailing slash (or empty).
    prefix: String,
}

impl std::fmt::Debug for S3MetadataCopier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No credentials in logs.
        f.debug_struct("S3MetadataCopier")
            .field("bucket_url", &self.bucket_url)
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl S3MetadataCopier {
    /// A copier for the bucket `store` was built for by `builder`.
    pub fn new(
        store: &AmazonS3,
        builder: &AmazonS3Builder,
        prefix: &str,
        client: &ClientOptions,
    ) -> Result<S3MetadataCopier, StoreError> {
        let config = |key| builder.get_config_value(&key);
        let region = config(AmazonS3ConfigKey::Region).unwrap_or_else(|| "us-east-1".into());
        let bucket = config(AmazonS3ConfigKey::Bucket)
            .ok_or_else(|| StoreError("the S3 store has no bucket".into()))?;
        let endpoint = config(AmazonS3ConfigKey::Endpoint)
            .unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
        let http = ReqwestConnector::default()
            .connect(client)
            .map_err(|e| StoreError(error_chain(&e)))?;
        Ok(S3MetadataCopier {
            http,
            credentials: store.credentials().clone(),
            region,
            bucket_url: format!("{}/{bucket}", endpoint.trim_end_matches('/')),
            bucket,
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{}/", prefix.trim_matches('/'))
            },
        })
    }

    /// Replaces the metadata of the object at `key` (relative to the prefix),
    /// of `size` bytes and ETag `etag`, with `attributes`; returns the ETag
    /// the store gives the copy.
    pub async fn replace(
        &self,
        key: &str,
        size: u64,
        etag: Option<&str>,
        attributes: &Attributes,
    ) -> Result<Option<String>, MetadataCopyError> {
        if size > MAX_COPY_SIZE {
            return Err(MetadataCopyError::TooLarge(key.to_string()));
        }
        let failed = |why: String| MetadataCopyError::Failed {
            key: key.to_string(),
            why,
        };
        let encoded = utf8_percent_encode(&format!("{}{key}", self.prefix), KEY_ENCODE).to_string();
        let mut request = http::Request::builder()
            .method(http::Method::PUT)
            .uri(format!("{}/{encoded}", self.bucket_url))
            .header("x-amz-copy-source", format!("/{}/{encoded}", self.bucket))
            .header("x-amz-metadata-directive", "REPLACE");
        if let Some(etag) = etag {
            request = request.header("x-amz-copy-source-if-match", etag);
        }
        for (name, value) in headers_of(attributes) {
            request = request.header(name, value);
        }
        let mut request: HttpRequest = request
            .body(HttpRequestBody::from(Vec::new()))
            .map_err(|e| failed(e.to_string()))?;
        let credential = self
            .credentials
            .get_credential()
            .await
            .map_err(|e| failed(error_chain(&e)))?;
        AwsAuthorizer::new(&credential, "s3", &self.region)
            .try_authorize(&mut request, None)
            .map_err(|e| failed(error_chain(&e)))?;
        let response = self
            .http
            .execute(request)
            .await
            .map_err(|e| failed(error_chain(&e)))?;
        let status = response.status();
        let body = response
            .into_body()
            .bytes()
            .await
            .map_err(|e| failed(error_chain(&e)))?;
        let text = String::from_utf8_lossy(&body);
        match status.as_u16() {
            // S3 can answer 200 and put the error in the body.
            200 if !text.contains("<Error>") => Ok(xml_value(&text, "ETag")),
            412 => Err(MetadataCopyError::Changed),
            404 => Err(MetadataCopyError::Missing),
            _ => Err(failed(format!(
                "HTTP {status}: {}",
                xml_value(&text, "Message").unwrap_or_else(|| text.chars().take(200).collect())
            ))),
        }
    }
}

/// The request headers that carry `attributes`.
fn headers_of(attributes: &Attributes) -> Vec<(String, String)> {
    attributes
        .iter()
        .filter_map(|(attribute, value)| {
            let name = match attribute {
                Attribute::ContentType => "content-type".to_string(),
                Attribute::ContentEncoding => "content-encoding".to_string(),
                Attribute::ContentDisposition => "content-disposition".to_string(),
                Attribute::ContentLanguage => "content-language".to_string(),
                Attribute::CacheControl => "cache-control".to_string(),
                Attribute::Metadata(key) => format!("x-amz-meta-{key}"),
                _ => return None,
            };
            Some((name, value.to_string()))
        })
        .collect()
}

/// The text of the first `<tag>` element, entities for quotes undone.
fn xml_value(text: &str, tag: &str) -> Option<String> {
    let start = text.find(&format!("<{tag}>"))? + tag.len() + 2;
    let end = start + text[start..].find(&format!("</{tag}>"))?;
    Some(
        text[start..end]
            .replace("&quot;", "\"")
            .replace("&#34;", "\""),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_results_and_errors_are_read_from_the_xml() {
        let ok = "<CopyObjectResult><LastModified>x</LastModified><ETag>&quot;abc&quot;</ETag></CopyObjectResult>";
        assert_eq!(xml_value(ok, "ETag").as_deref(), Some("\"abc\""));
        let err = "<Error><Code>InvalidRequest</Code><Message>too big</Message></Error>";
        assert_eq!(xml_value(err, "Message").as_deref(), Some("too big"));
        assert_eq!(xml_value(err, "ETag"), None);
    }

    #[test]
    fn metadata_and_content_attributes_become_headers() {
        let mut attributes = Attributes::new();
        attributes.insert(Attribute::Metadata("mode".into()), "33188".into());
        attributes.insert(Attribute::ContentType, "text/plain".into());
        let mut headers = headers_of(&attributes);
        headers.sort();
        assert_eq!(
            headers,
            [
                ("content-type".to_string(), "text/plain".to_string()),
                ("x-amz-meta-mode".to_string(), "33188".to_string())
            ]
        );
        let key = utf8_percent_encode("a b/ü+c.bin", KEY_ENCODE).to_string();
        assert_eq!(key, "a%20b/%C3%BC%2Bc.bin");
    }
}
