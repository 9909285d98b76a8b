//! The engine's side of upload jobs (see [`UploadJobs`]): how the namespace
//! names an uploaded file, and starting a staged file's upload.
//!
//! [`UploadJobs`]: crate::write::upload_jobs::UploadJobs

use std::sync::Arc;

use tierfs_fuse::FileKind;

use crate::engine::EngineCore;
use crate::model::version::FileId;
use crate::namespace::Node;
use crate::write::path::StagedFile;
use crate::write::upload_jobs::UploadedFiles;
use crate::write::uploader::Uploaded;

impl EngineCore {
    /// Starts the upload of a staged file, or asks the running one to go again.
    pub(crate) fn queue_upload(self: &Arc<Self>, id: u64) {
        self.uploads.queue(id, self.clone());
    }
}

impl UploadedFiles for EngineCore {
    fn named_upload(&self, id: u64, staged: Option<&StagedFile>, up: &Uploaded) -> (u64, FileId) {
        let node = self.node_of_upload(id, staged, up);
        (node.ino, self.file_id(&node))
    }

    fn object_id(&self, key: &str) -> u128 {
        EngineCore::object_id(self, key)
    }

    fn show_uploaded(&self, ino: u64, size: u64, etag: Option<String>) {
        self.ns().mark_uploaded(ino, size, etag);
    }

    fn uploaded_at(&self, key: &str) {
        // A new file below a pinned directory joins the pin.
        if self.manager().pins.effective(key).is_some() {
            self.manager().placement_changed();
        }
    }
}

impl EngineCore {
    /// The node an upload shows, named as reads will name the object's new
    /// version (its ETag and size).
    fn node_of_upload(&self, id: u64, staged: Option<&StagedFile>, up: &Uploaded) -> Node {
        let ino = staged
            .map(|s| s.ino)
            .or_else(|| self.ns().node_by_staged(id));
        let mut node = ino
            .and_then(|ino| self.ns().node(ino))
            .unwrap_or_else(|| Node {
                ino: 0,
                parent: 0,
                path: up.key.clone(),
                kind: FileKind::File,
                size: 0,
                mtime: std::time::UNIX_EPOCH,
                etag: None,
                staged: None,
                posix: Default::default(),
                posix_known: true,
            });
        node.etag = up.etag.clone();
        node.size = up.size;
        node
    }
}
