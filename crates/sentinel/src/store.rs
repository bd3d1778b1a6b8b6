//! Where an index lives: a local directory or an `s3://bucket/prefix` URI (any S3-compatible
//! server). S3 access goes through the `object_store` crate, configured from the usual AWS
//! environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
//! `AWS_ENDPOINT_URL` for a non-AWS server, `AWS_ALLOW_HTTP=true` for plain http).

use std::path::PathBuf;

use crate::SentinelError;
use crate::index::{CONFIG_FILE, CORPUS_FILE, EMBEDDINGS_FILE, SentinelIndex};

/// Explicit S3 keys, for callers that pass them rather than set the AWS environment (the
/// reference library's `aws_access_key_id` / `aws_secret_access_key`). Region, endpoint and
/// plain-http settings still come from the environment. `Debug` never shows the secret.
#[derive(Clone, Default)]
pub struct S3Credentials {
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
}

impl std::fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// A parsed index location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A local directory.
    Local(PathBuf),
    /// A bucket and key prefix.
    S3 {
        /// Bucket name.
        bucket: String,
        /// Key prefix (no leading or trailing slash).
        prefix: String,
    },
}

impl Location {
    /// `s3://bucket/prefix` or a local path.
    pub fn parse(s: &str) -> Result<Self, SentinelError> {
        match s.strip_prefix("s3://") {
            Some(rest) => {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err(SentinelError::BadInput(format!(
                        "{s}: an S3 location needs a bucket (s3://bucket/prefix)"
                    )));
                }
                Ok(Self::S3 {
                    bucket: bucket.to_string(),
                    prefix: prefix.trim_matches('/').to_string(),
                })
            }
            None => Ok(Self::Local(PathBuf::from(s))),
        }
    }
}

#[cfg(feature = "s3")]
mod s3 {
    use object_store::ObjectStoreExt;
    use object_store::aws::AmazonS3Builder;
    use object_store::path::Path as ObjPath;

    use super::S3Credentials;
    use crate::SentinelError;

    fn err(uri: &str, e: impl std::fmt::Display) -> SentinelError {
        SentinelError::Storage(format!("{uri}: {e}"))
    }

    fn runtime(uri: &str) -> Result<tokio::runtime::Runtime, SentinelError> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| err(uri, e))
    }

    fn store(
        bucket: &str,
        uri: &str,
        creds: Option<&S3Credentials>,
    ) -> Result<object_store::aws::AmazonS3, SentinelError> {
        let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
        if let Some(c) = creds {
            b = b
                .with_access_key_id(&c.access_key_id)
                .with_secret_access_key(&c.secret_access_key);
        }
        b.build().map_err(|e| err(uri, e))
    }

    fn key(prefix: &str, name: &str) -> ObjPath {
        if prefix.is_empty() {
            ObjPath::from(name)
        } else {
            ObjPath::from(format!("{prefix}/{name}"))
        }
    }

    /// Fetch objects; `Ok(None)` for a missing optional one.
    pub(super) fn get(
        bucket: &str,
        prefix: &str,
        names: &[(&str, bool)],
        creds: Option<&S3Credentials>,
    ) -> Result<Vec<Option<Vec<u8>>>, SentinelError> {
        let uri = format!("s3://{bucket}/{prefix}");
        let s = store(bucket, &uri, creds)?;
        runtime(&uri)?.block_on(async {
            let mut out = Vec::new();
            for (name, required) in names {
                let k = key(prefix, name);
                match s.get(&k).await {
                    Ok(r) => out.push(Some(r.bytes().await.map_err(|e| err(&uri, e))?.to_vec())),
                    Err(object_store::Error::NotFound { .. }) if !required => out.push(None),
                    Err(e) => return Err(err(&format!("s3://{bucket}/{k}"), e)),
                }
            }
            Ok(out)
        })
    }

    /// Store objects.
    pub(super) fn put(
        bucket: &str,
        prefix: &str,
        files: Vec<(&str, Vec<u8>)>,
        creds: Option<&S3Credentials>,
    ) -> Result<(), SentinelError> {
        let uri = format!("s3://{bucket}/{prefix}");
        let s = store(bucket, &uri, creds)?;
        runtime(&uri)?.block_on(async {
            for (name, bytes) in files {
                let k = key(prefix, name);
                s.put(&k, bytes.into())
                    .await
                    .map_err(|e| err(&format!("s3://{bucket}/{k}"), e))?;
            }
            Ok(())
        })
    }
}

#[cfg(not(feature = "s3"))]
mod s3 {
    use super::S3Credentials;
    use crate::SentinelError;

    fn off() -> SentinelError {
        SentinelError::BadInput(
            "this build of vigil-sentinel has no S3 support (enable the `s3` feature)".into(),
        )
    }

    pub(super) fn get(
        _bucket: &str,
        _prefix: &str,
        _names: &[(&str, bool)],
        _creds: Option<&S3Credentials>,
    ) -> Result<Vec<Option<Vec<u8>>>, SentinelError> {
        Err(off())
    }

    pub(super) fn put(
        _bucket: &str,
        _prefix: &str,
        _files: Vec<(&str, Vec<u8>)>,
        _creds: Option<&S3Credentials>,
    ) -> Result<(), SentinelError> {
        Err(off())
    }
}

impl SentinelIndex {
    /// Load from a local directory or an `s3://bucket/prefix` URI.
    pub fn load_from(
        location: &str,
        negative_to_positive_ratio: Option<f64>,
        seed: Option<u64>,
    ) -> Result<Self, SentinelError> {
        Self::load_from_with(location, negative_to_positive_ratio, seed, None)
    }

    /// [`Self::load_from`] with explicit S3 keys (`None`: the AWS environment).
    pub fn load_from_with(
        location: &str,
        negative_to_positive_ratio: Option<f64>,
        seed: Option<u64>,
        creds: Option<&S3Credentials>,
    ) -> Result<Self, SentinelError> {
        match Location::parse(location)? {
            Location::Local(dir) => Self::load(&dir, negative_to_positive_ratio, seed),
            Location::S3 { bucket, prefix } => {
                let origin = PathBuf::from(format!("s3://{bucket}/{prefix}"));
                let mut files = s3::get(
                    &bucket,
                    &prefix,
                    &[
                        (CONFIG_FILE, true),
                        (EMBEDDINGS_FILE, true),
                        (CORPUS_FILE, false),
                    ],
                    creds,
                )?
                .into_iter();
                let config = files.next().flatten().unwrap_or_default();
                let embeddings = files.next().flatten().unwrap_or_default();
                let corpus = files.next().flatten();
                Self::from_files(
                    &config,
                    &embeddings,
                    corpus.as_deref(),
                    &origin,
                    negative_to_positive_ratio,
                    seed,
                )
            }
        }
    }

    /// Save to a local directory or an `s3://bucket/prefix` URI (the same three files).
    pub fn save_to(&self, location: &str) -> Result<(), SentinelError> {
        self.save_to_with(location, None)
    }

    /// [`Self::save_to`] with explicit S3 keys (`None`: the AWS environment).
    pub fn save_to_with(
        &self,
        location: &str,
        creds: Option<&S3Credentials>,
    ) -> Result<(), SentinelError> {
        match Location::parse(location)? {
            Location::Local(dir) => self.save(&dir),
            Location::S3 { bucket, prefix } => s3::put(&bucket, &prefix, self.to_files()?, creds),
        }
    }
}

/// Read the named files of an index location (a directory or `s3://bucket/prefix`): `None` for
/// a missing file that is not required, an error for a missing required one.
pub fn read_files(
    location: &str,
    names: &[(&str, bool)],
) -> Result<Vec<Option<Vec<u8>>>, SentinelError> {
    read_files_with(location, names, None)
}

/// [`read_files`] with explicit S3 keys (`None`: the AWS environment).
pub fn read_files_with(
    location: &str,
    names: &[(&str, bool)],
    creds: Option<&S3Credentials>,
) -> Result<Vec<Option<Vec<u8>>>, SentinelError> {
    match Location::parse(location)? {
        Location::Local(dir) => names
            .iter()
            .map(|(name, required)| {
                let path = dir.join(name);
                match std::fs::read(&path) {
                    Ok(b) => Ok(Some(b)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => Ok(None),
                    Err(source) => Err(SentinelError::Io { path, source }),
                }
            })
            .collect(),
        Location::S3 { bucket, prefix } => s3::get(&bucket, &prefix, names, creds),
    }
}

/// Write whole files into an index location (each local file replaced atomically).
pub fn write_files(location: &str, files: Vec<(&str, Vec<u8>)>) -> Result<(), SentinelError> {
    write_files_with(location, files, None)
}

/// [`write_files`] with explicit S3 keys (`None`: the AWS environment).
pub fn write_files_with(
    location: &str,
    files: Vec<(&str, Vec<u8>)>,
    creds: Option<&S3Credentials>,
) -> Result<(), SentinelError> {
    match Location::parse(location)? {
        Location::Local(dir) => {
            std::fs::create_dir_all(&dir).map_err(|source| SentinelError::Io {
                path: dir.clone(),
                source,
            })?;
            for (name, bytes) in files {
                vigil_core::write_atomic(&dir.join(name), &bytes)
                    .map_err(|(path, source)| SentinelError::Io { path, source })?;
            }
            Ok(())
        }
        Location::S3 { bucket, prefix } => s3::put(&bucket, &prefix, files, creds),
    }
}

/// Whether a location string names S3.
pub fn is_s3(location: &str) -> bool {
    location.starts_with("s3://")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse() {
        assert_eq!(
            Location::parse("s3://b/x/y/").unwrap(),
            Location::S3 {
                bucket: "b".into(),
                prefix: "x/y".into()
            }
        );
        assert_eq!(
            Location::parse("idx").unwrap(),
            Location::Local(PathBuf::from("idx"))
        );
        assert!(Location::parse("s3:///x").is_err());
    }
}
