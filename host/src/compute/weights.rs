//! Model files: resolved by name inside a models directory, memory-mapped once
//! per process and shared read-only by every tenant and realm that opens them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use super::ComputeError;
use super::gguf::{GgufFile, TensorEntry};

pub struct ModelFile {
    pub path: PathBuf,
    pub gguf: GgufFile,
}

impl ModelFile {
    pub fn data(&self, tensor: &TensorEntry) -> &[u8] {
        self.gguf.data(tensor)
    }
}

/// Open model files by canonical path. A file stays mapped while any realm holds it.
#[derive(Default)]
pub struct WeightsRegistry {
    files: Mutex<HashMap<PathBuf, Weak<ModelFile>>>,
}

impl WeightsRegistry {
    pub fn open(&self, path: &Path) -> Result<Arc<ModelFile>, ComputeError> {
        let canonical = path
            .canonicalize()
            .map_err(|e| ComputeError::NotFound(format!("model file `{}`: {e}", path.display())))?;
        let mut files = self
            .files
            .lock()
            .map_err(|_| ComputeError::Internal("weights registry poisoned".into()))?;
        if let Some(file) = files.get(&canonical).and_then(Weak::upgrade) {
            return Ok(file);
        }
        let gguf = GgufFile::open(&canonical).map_err(|e| ComputeError::InvalidFile(e.to_string()))?;
        let file = Arc::new(ModelFile {
            path: canonical.clone(),
            gguf,
        });
        files.retain(|_, weak| weak.strong_count() > 0);
        files.insert(canonical, Arc::downgrade(&file));
        tracing::info!(path = %file.path.display(), bytes = file.gguf.mapped_bytes(), "mapped model file");
        Ok(file)
    }

    /// Files mapped right now.
    pub fn open_files(&self) -> usize {
        self.files
            .lock()
            .map(|f| f.values().filter(|w| w.strong_count() > 0).count())
            .unwrap_or(0)
    }
}

/// Where model names point: `NAME` is `DIR/NAME.gguf` (or `DIR/NAME` when it
/// already ends in `.gguf`). Paths are accepted only where the operator allows
/// them (the one-shot CLI), never for a served tenant.
#[derive(Clone, Debug)]
pub struct ModelCatalog {
    pub dir: PathBuf,
    pub allow_paths: bool,
}

impl ModelCatalog {
    pub fn resolve(&self, name: &str) -> Result<PathBuf, ComputeError> {
        let looks_like_path = name.contains('/') || name.contains('\\');
        if looks_like_path {
            if !self.allow_paths {
                return Err(ComputeError::Denied(format!(
                    "model `{name}`: paths are not allowed here; name a model in the models directory"
                )));
            }
            let path = PathBuf::from(name);
            return if path.is_file() {
                Ok(path)
            } else {
                Err(ComputeError::NotFound(format!("model file `{name}` does not exist")))
            };
        }
        if name.is_empty() || name.starts_with('.') {
            return Err(ComputeError::NotFound(format!("`{name}` is not a model name")));
        }
        let file = if name.ends_with(".gguf") {
            name.to_string()
        } else {
            format!("{name}.gguf")
        };
        let path = self.dir.join(file);
        if path.is_file() {
            Ok(path)
        } else if self.allow_paths && Path::new(name).is_file() {
            Ok(PathBuf::from(name))
        } else {
            Err(ComputeError::NotFound(format!(
                "model `{name}` is not in `{}` (see `realm-host models`)",
                self.dir.display()
            )))
        }
    }

    /// Model names available in the directory, sorted.
    pub fn list(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_suffix(".gguf"))
                    .map(str::to_string)
            })
            .collect();
        names.sort();
        names
    }
}
