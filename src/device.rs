//! Where a run computes: `cpu`, `cuda` or `cuda:N` (`train.device` in the config, `--device` on
//! `train`, `eval`, `encode` and `serve`).
//!
//! A device the build or the machine cannot use is an error naming what is missing (the `cuda`
//! feature, the driver, the card), never a silent CPU run. Dense parameters, their optimiser
//! state and each step's leaf live on the device; the embedding tables stay in host memory (a
//! step uploads the rows it reads and downloads their gradients), and the fused CPU ops give
//! way to the generic path ([`Ops`]) wherever the tensors are not on the CPU.

use crate::{Error, Result};
use candle_core::Device;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A device as the config and the command line name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    /// The host's cores.
    #[default]
    Cpu,
    /// CUDA card `N` (ordinal as the driver numbers them).
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::Config(format!(
                "device `{s}`: expected `cpu`, `cuda` or `cuda:N` (N a card number)"
            ))
        };
        match s.trim() {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            other => match other.strip_prefix("cuda:") {
                Some(n) => n.parse().map(Self::Cuda).map_err(|_| bad()),
                None => Err(bad()),
            },
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl Serialize for DeviceSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DeviceSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl DeviceSpec {
    /// Opens the device.
    ///
    /// # Errors
    /// [`Error::Config`] naming what is missing: a build without the `cuda` feature, or (with
    /// it) the driver's or the card's error.
    pub fn open(self) -> Result<Device> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(n) => open_cuda(n),
        }
    }
}

#[cfg(feature = "cuda")]
fn open_cuda(n: usize) -> Result<Device> {
    Device::new_cuda(n).map_err(|e| {
        Error::Config(format!(
            "device cuda:{n}: cannot be opened ({e}); check the NVIDIA driver (libcuda.so.1), \
             `nvidia-smi`, and that card {n} exists"
        ))
    })
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(n: usize) -> Result<Device> {
    Err(Error::Config(format!(
        "device cuda:{n}: this build has no CUDA support; rebuild with `--features cuda` \
         (on a machine with nvcc, see kernels/README.md) or use `--device cpu`"
    )))
}

/// The dtype the generic path computes in (`model.precision`): `f32`, or `bf16` activations and
/// tokens with f32 master weights (the tables, the dense parameters, their optimisers), f32
/// statistics in Dice and an f32 loss. Needs the generic path (a GPU, or `model.ops =
/// "generic"`); on the CPU it is for testing, not speed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 throughout.
    #[default]
    F32,
    /// bf16 activations, f32 master weights.
    Bf16,
}

impl Precision {
    /// The activations' dtype.
    pub fn dtype(self) -> candle_core::DType {
        match self {
            Self::F32 => candle_core::DType::F32,
            Self::Bf16 => candle_core::DType::BF16,
        }
    }
}

/// Which implementation the model's parts run (`model.ops`).
///
/// - `fused`: the hand-written CPU ops (one op per unit with its own backward, reading the
///   step's leaf in place): the fastest on the CPU, and CPU-only.
/// - `generic`: the same functions composed of candle ops, differentiated by candle's autograd,
///   with the search and the hash signatures through [`crate::kernels`]' ops: runs on any device.
///
/// On a device other than the CPU every part runs `generic`, whatever the config says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ops {
    /// The fused CPU ops.
    #[default]
    Fused,
    /// Candle ops (any device).
    Generic,
}

impl Ops {
    /// What runs on `device`: `self` on the CPU, `Generic` elsewhere.
    pub fn on(self, device: &Device) -> Self {
        if device.is_cpu() {
            self
        } else {
            Self::Generic
        }
    }
    /// Whether this is the generic path.
    pub fn generic(self) -> bool {
        self == Self::Generic
    }
    /// `fused` or `generic`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Fused => "fused",
            Self::Generic => "generic",
        }
    }
}
