//! Where the objects live: parsing STORE arguments and building an `object_store`
//! client for them, with the retry budget the mount options give.

pub mod aws_profile;
pub mod digest_metadata;
pub mod posix_metadata;
pub mod s3_metadata;

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::local::LocalFileSystem;
use object_store::multipart::MultipartStore;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, RetryConfig};

use crate::error::error_chain;
use crate::model::options::MountOptions;

/// A STORE argument that cannot be used, in words for the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(pub String);

/// A client for one store, with the extra handles the write path needs.
#[derive(Clone)]
pub struct StoreClient {
    pub objects: Arc<dyn ObjectStore>,
    /// The low-level multipart API, so that an upload can be resumed by its id
    /// after a restart. Local directories have none.
    pub multipart: Option<Arc<dyn MultipartStore>>,
    /// The directory behind a local store.
    pub local_root: Option<PathBuf>,
    /// Changes an S3 object's metadata in place; None for other stores.
    pub metadata: Option<Arc<s3_metadata::S3MetadataCopier>>,
}

impl StoreClient {
    /// After an object moved away from `key`: on a local store, removes the
    /// directories above it that are now empty (renames leave them, and the
    /// mount would list them), up to the store's root. Nothing for a bucket.
    pub fn prune_empty_parents(&self, key: &str) {
        let Some(root) = &self.local_root else {
            return;
        };
        let mut dir = root.join(key);
        while dir.pop() && dir.starts_with(root) && dir != *root {
            if std::fs::remove_dir(&dir).is_err() {
                break;
            }
        }
    }

    /// A store over a local directory.
    pub fn local(dir: &FsPath) -> Result<StoreClient, StoreError> {
        check_local_dir(dir)?;
        let root = std::fs::canonicalize(dir)
            .map_err(|e| StoreError(format!("store directory {}: {e}", dir.display())))?;
        // Written objects are synced to disk before a write counts as done, and a
        // directory that its last object left is removed, as a bucket has none.
        let store = LocalFileSystem::new_with_prefix(&root)
            .map_err(|e| StoreError(error_chain(&e)))?
            .with_fsync(true)
            .with_automatic_cleanup(true);
        Ok(StoreClient {
            objects: Arc::new(store),
            multipart: None,
            local_root: Some(root),
            metadata: None,
        })
    }

    fn remote<T: ObjectStore + MultipartStore>(store: T, prefix: &str) -> StoreClient {
        fn client<S: ObjectStore + MultipartStore>(store: S) -> StoreClient {
            let store = Arc::new(store);
            StoreClient {
                objects: store.clone(),
                multipart: Some(store),
                local_root: None,
                metadata: None,
            }
        }
        if prefix.is_empty() {
            client(store)
        } else {
            client(PrefixStore::new(store, Path::from(prefix)))
        }
    }
}

/// A parsed STORE argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    Local(PathBuf),
    S3 { bucket: String, prefix: String },
    Gcs { bucket: String, prefix: String },
    Azure { container: String, prefix: String },
}

impl StoreLocation {
    /// Parses a local directory path, `file://` URL, `s3://`, `gs://` or `az://` URL.
    pub fn parse(text: &str) -> Result<StoreLocation, StoreError> {
        if text.is_empty() {
            return Err(StoreError(
                "the store is empty: give a directory or s3://bucket/prefix".into(),
            ));
        }
        let Some((scheme, rest)) = text.split_once("://") else {
            return Ok(StoreLocation::Local(PathBuf::from(text)));
        };
        let (bucket, prefix) = match rest.split_once('/') {
            Some((b, p)) => (b.to_string(), p.trim_matches('/').to_string()),
            None => (rest.to_string(), String::new()),
        };
        if scheme != "file" {
            validate_bucket(&bucket, text)?;
            validate_prefix(&prefix, text)?;
        }
        match scheme {
            "file" => {
                if !rest.starts_with('/') {
                    return Err(StoreError(format!(
                        "'{text}' is not a file URL: write file:///absolute/path"
                    )));
                }
                Ok(StoreLocation::Local(PathBuf::from(rest)))
            }
            "s3" => Ok(StoreLocation::S3 { bucket, prefix }),
            "gs" => Ok(StoreLocation::Gcs { bucket, prefix }),
            "az" | "azure" => Ok(StoreLocation::Azure {
                container: bucket,
                prefix,
            }),
            other => Err(StoreError(format!(
                "unsupported store scheme '{other}://' in '{text}': use a local directory, file://, s3://, gs:// or az://"
            ))),
        }
    }

    /// A stable name for this store, part of every cache key, so that one cache
    /// directory can serve several stores without mixing their objects.
    pub fn identity(&self, options: &MountOptions) -> String {
        let endpoint = options.endpoint.as_deref().unwrap_or("");
        match self {
            StoreLocation::Local(p) => {
                let abs = std::fs::canonicalize(p).unwrap_or_else(|_| p.clone());
                format!("file://{}", abs.display())
            }
            StoreLocation::S3 { bucket, prefix } => format!("s3://{bucket}/{prefix}@{endpoint}"),
            StoreLocation::Gcs { bucket, prefix } => format!("gs://{bucket}/{prefix}@{endpoint}"),
            StoreLocation::Azure { container, prefix } => {
                format!("az://{container}/{prefix}@{endpoint}")
            }
        }
    }

    /// Builds the client. `retries` and `timeout` bound how long one request may
    /// take, retries included, before it fails.
    pub fn build(
        &self,
        options: &MountOptions,
        retries: u32,
        timeout: Duration,
    ) -> Result<StoreClient, StoreError> {
        let (retry, client) = http_settings(options, retries, timeout);
        let failed = |e: object_store::Error| StoreError(error_chain(&e));
        match self {
            StoreLocation::Local(dir) => StoreClient::local(dir),
            StoreLocation::S3 { bucket, prefix } => {
                let builder = s3_builder(bucket, options)
                    .with_retry(retry)
                    .with_client_options(client.clone());
                let s3 = builder.clone().build().map_err(failed)?;
                let copier = s3_metadata::S3MetadataCopier::new(&s3, &builder, prefix, &client)?;
                let mut store = StoreClient::remote(s3, prefix);
                store.metadata = Some(Arc::new(copier));
                Ok(store)
            }
            StoreLocation::Gcs { bucket, prefix } => {
                let builder = GoogleCloudStorageBuilder::from_env()
                    .with_bucket_name(bucket)
                    .with_retry(retry)
                    .with_client_options(client);
                Ok(StoreClient::remote(
                    builder.build().map_err(failed)?,
                    prefix,
                ))
            }
            StoreLocation::Azure { container, prefix } => {
                let builder = MicrosoftAzureBuilder::from_env()
                    .with_container_name(container)
                    .with_retry(retry)
                    .with_client_options(client);
                Ok(StoreClient::remote(
                    builder.build().map_err(failed)?,
                    prefix,
                ))
            }
        }
    }

    pub async fn probe(
        &self,
        store: &dyn ObjectStore,
        options: &MountOptions,
    ) -> Result<(), StoreError> {
        let Err(e) = store.list_with_delimiter(None).await else {
            return Ok(());
        };
        let text = error_chain(&e);
        let endpoint = options
            .endpoint
            .as_deref()
            .unwrap_or("the default endpoint");
        let name = match self {
            StoreLocation::Local(p) => p.display().to_string(),
            StoreLocation::S3 { bucket, .. } | StoreLocation::Gcs { bucket, .. } => bucket.clone(),
            StoreLocation::Azure { container, .. } => container.clone(),
        };
        let lower = text.to_lowercase();
        let message = if lower.contains("169.254.169.254")
            || lower.contains("token request")
            || lower.contains("credential")
        {
            let hint = match self {
                StoreLocation::S3 { .. } => {
                    "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE"
                }
                StoreLocation::Gcs { .. } => {
                    "set GOOGLE_APPLICATION_CREDENTIALS or GOOGLE_SERVICE_ACCOUNT"
                }
                _ => "set AZURE_STORAGE_ACCOUNT_NAME and AZURE_STORAGE_ACCOUNT_KEY",
            };
            format!("no credentials for '{name}' at {endpoint}: {hint}")
        } else if lower.contains("nosuchbucket")
            || lower.contains("bucket does not exist")
            || lower.contains("containernotfound")
        {
            format!("bucket '{name}' does not exist at {endpoint}")
        } else if lower.contains("connect")
            || lower.contains("dns")
            || lower.contains("timed out")
            || lower.contains("timeout")
        {
            format!("cannot reach the object store at {endpoint}: {text}")
        } else if lower.contains("accessdenied")
            || lower.contains("forbidden")
            || lower.contains("signature")
            || lower.contains("invalidaccesskeyid")
        {
            format!(
                "access to bucket '{name}' was denied at {endpoint}: check the credentials ({text})"
            )
        } else {
            format!("cannot list bucket '{name}' at {endpoint}: {text}")
        };
        Err(StoreError(message))
    }
}

fn check_local_dir(dir: &FsPath) -> Result<(), StoreError> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(StoreError(format!(
            "store {} is not a directory",
            dir.display()
        ))),
        Err(e) => Err(StoreError(format!(
            "store directory {}: {e}",
            dir.display()
        ))),
    }
}

fn validate_bucket(bucket: &str, text: &str) -> Result<(), StoreError> {
    let ok = (3..=63).contains(&bucket.len())
        && bucket
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && !bucket.starts_with(['-', '.'])
        && !bucket.ends_with(['-', '.']);
    if ok {
        Ok(())
    } else {
        Err(StoreError(format!(
            "'{bucket}' in '{text}' is not a valid bucket name: 3 to 63 lowercase letters, digits, '-' or '.'"
        )))
    }
}

fn validate_prefix(prefix: &str, text: &str) -> Result<(), StoreError> {
    if prefix.is_empty() {
        return Ok(());
    }
    Path::parse(prefix)
        .map(|_| ())
        .map_err(|e| StoreError(format!("bad prefix '{prefix}' in '{text}': {e}")))
}

/// Retries with backoff within `timeout`, and the HTTP client's timeouts; plain
/// HTTP only for an `http://` endpoint.
fn http_settings(
    options: &MountOptions,
    retries: u32,
    timeout: Duration,
) -> (RetryConfig, ClientOptions) {
    let retry = RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(50),
            max_backoff: timeout.min(Duration::from_secs(5)),
            base: 2.0,
        },
        max_retries: retries as usize,
        retry_timeout: timeout,
    };
    let client = ClientOptions::new()
        .with_timeout(timeout)
        .with_connect_timeout(timeout.min(Duration::from_secs(5)))
        .with_allow_http(
            options
                .endpoint
                .as_deref()
                .is_some_and(|e| e.starts_with("http://")),
        );
    (retry, client)
}

/// An S3 client for `bucket`: credentials from the environment, else from the
/// shared credentials file's profile; the region and endpoint the options give.
fn s3_builder(bucket: &str, options: &MountOptions) -> AmazonS3Builder {
    let mut builder = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_virtual_hosted_style_request(false);
    if std::env::var_os("AWS_ACCESS_KEY_ID").is_none()
        && let Some(profile) = crate::store::aws_profile::load_profile_credentials()
    {
        builder = builder
            .with_access_key_id(profile.access_key_id)
            .with_secret_access_key(profile.secret_access_key);
        if let Some(token) = profile.session_token {
            builder = builder.with_token(token);
        }
    }
    let region = options
        .region
        .clone()
        .or_else(|| std::env::var("AWS_REGION").ok())
        .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
        .unwrap_or_else(|| "us-east-1".to_string());
    builder = builder.with_region(region);
    if let Some(endpoint) = &options.endpoint {
        builder = builder.with_endpoint(endpoint);
    }
    builder
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        assert_eq!(
            StoreLocation::parse("s3://bucket/a/b/"),
            Ok(StoreLocation::S3 {
                bucket: "bucket".into(),
                prefix: "a/b".into()
            })
        );
        assert_eq!(
            StoreLocation::parse("s3://bucket"),
            Ok(StoreLocation::S3 {
                bucket: "bucket".into(),
                prefix: "".into()
            })
        );
        assert_eq!(
            StoreLocation::parse("./store"),
            Ok(StoreLocation::Local("./store".into()))
        );
        assert_eq!(
            StoreLocation::parse("file:///data/s"),
            Ok(StoreLocation::Local("/data/s".into()))
        );
        assert!(matches!(
            StoreLocation::parse("gs://ckpt/x"),
            Ok(StoreLocation::Gcs { .. })
        ));
        assert!(matches!(
            StoreLocation::parse("az://ckpt/x"),
            Ok(StoreLocation::Azure { .. })
        ));
    }

    #[test]
    fn bad_locations_say_why() {
        let cases = [
            ("ftp://host/x", "unsupported store scheme 'ftp://'"),
            ("s3://Bad_Bucket/x", "is not a valid bucket name"),
            ("s3://", "is not a valid bucket name"),
            ("s3://bucket/a//b", "bad prefix 'a//b'"),
            ("file://relative", "is not a file URL"),
            ("", "the store is empty"),
        ];
        for (input, expected) in cases {
            let err = StoreLocation::parse(input).unwrap_err().to_string();
            assert!(err.contains(expected), "{input}: {err}");
        }
    }
}
