//! `Config`: a model's `config.json`, parsed once into the one [`Description`] the
//! worker builds from too, with typed access to its other fields (through
//! [`ConfigView`], which looks into a VLM's text sub-config first).
use std::ops::Deref;
use std::path::{Path, PathBuf};

use ::model::{DescribeError, Description};
use serde_json::{Map, Value};

use crate::dtype::Dtype;
use crate::error::EstimateError;

pub use ::model::view::{as_u64, map_u64, ConfigView};

/// A parsed and described `config.json`.
#[derive(Clone, Debug)]
pub struct Config {
    path: PathBuf,
    description: Description,
}

impl Config {
    /// Parses `config.json` text and describes it; `path` is used in errors.
    pub fn parse(path: &Path, text: &[u8]) -> Result<Config, EstimateError> {
        Config::parse_with(path, text, Description::new)
    }

    /// [`Config::parse`] for the worker: a family it does not run is the error, before
    /// anything else the config lacks ([`Description::new_runnable`]).
    pub fn parse_runnable(path: &Path, text: &[u8]) -> Result<Config, EstimateError> {
        Config::parse_with(path, text, Description::new_runnable)
    }

    fn parse_with(
        path: &Path,
        text: &[u8],
        describe: fn(Map<String, Value>) -> Result<Description, DescribeError>,
    ) -> Result<Config, EstimateError> {
        // Counted first: a tree of millions of tiny values would take ~20× the text.
        crate::json_size::check_values(path, text, crate::json_size::MAX_CONFIG_VALUES)?;
        let value: Value = serde_json::from_slice(text).map_err(|e| EstimateError::Json {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let Value::Object(root) = value else {
            return Err(EstimateError::Json {
                path: path.to_path_buf(),
                reason: "top level is not an object".to_string(),
            });
        };
        let description = describe(root).map_err(|e| match e {
            DescribeError::Implausible(source) => EstimateError::Implausible {
                path: path.to_path_buf(),
                source,
            },
            DescribeError::Config(reason) | DescribeError::Unsupported(reason) => {
                EstimateError::Config {
                    path: path.to_path_buf(),
                    reason,
                }
            }
        })?;
        Ok(Config {
            path: path.to_path_buf(),
            description,
        })
    }

    /// Reads and describes `dir/config.json` through the capped reader; also the bytes
    /// read.
    pub fn read(dir: &Path) -> Result<(Config, u64), EstimateError> {
        let (path, text) = read_text(dir)?;
        Ok((Config::parse(&path, &text)?, text.len() as u64))
    }

    /// [`Config::read`] for the worker ([`Config::parse_runnable`]).
    pub fn read_runnable(dir: &Path) -> Result<Config, EstimateError> {
        let (path, text) = read_text(dir)?;
        Config::parse_runnable(&path, &text)
    }

    /// The file this config came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The model's description: family, dimensions, layer plan, MLA, experts.
    pub fn description(&self) -> &Description {
        &self.description
    }

    /// The weights' dtype the config names (`torch_dtype` or `dtype`).
    pub fn dtype(&self) -> Option<Dtype> {
        ["torch_dtype", "dtype"]
            .iter()
            .find_map(|k| self.get(k).and_then(Value::as_str))
            .and_then(Dtype::from_torch_name)
    }

    /// An error about this config file.
    pub fn error(&self, reason: String) -> EstimateError {
        EstimateError::Config {
            path: self.path.clone(),
            reason,
        }
    }
}

impl Deref for Config {
    type Target = ConfigView;

    fn deref(&self) -> &ConfigView {
        self.description.view()
    }
}

/// `dir/config.json`'s path and text, through the capped reader.
fn read_text(dir: &Path) -> Result<(PathBuf, Vec<u8>), EstimateError> {
    let path = dir.join("config.json");
    if !crate::fsread::present(&path) {
        return Err(EstimateError::MissingConfig { path });
    }
    let text = crate::fsread::read_capped(&path, crate::fsread::MAX_CONFIG_BYTES, "config.json")?;
    Ok((path, text))
}
