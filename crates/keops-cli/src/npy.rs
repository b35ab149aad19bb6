//! Reading and writing `.npy` files: float32/float64 arrays in C order in, float or int64
//! arrays out.

use crate::error::{CliError, Result};
use npyz::{DType, NpyFile, Order, TypeChar, WriterBuilder};
use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::Path;

/// The values of a float array, in the precision they were stored in.
#[derive(Clone, Debug, PartialEq)]
pub enum FloatData {
    /// `float32` values.
    F32(Vec<f32>),
    /// `float64` values.
    F64(Vec<f64>),
}

/// The float types the CLI computes in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    /// `float32`.
    F32,
    /// `float64`.
    F64,
}

impl Dtype {
    /// From a NumPy dtype name (`float32`, `float64`; `f32`, `f64` also accepted).
    pub fn from_name(s: &str) -> Result<Dtype> {
        match s {
            "float32" | "f32" | "single" => Ok(Dtype::F32),
            "float64" | "f64" | "double" => Ok(Dtype::F64),
            _ => Err(CliError::new(format!(
                "--dtype: {s:?} is not one of float32, float64"
            ))),
        }
    }

    /// NumPy's name.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "float32",
            Dtype::F64 => "float64",
        }
    }
}

impl FloatData {
    /// The stored precision.
    pub fn dtype(&self) -> Dtype {
        match self {
            FloatData::F32(_) => Dtype::F32,
            FloatData::F64(_) => Dtype::F64,
        }
    }

    /// The values converted to `T` (exact for f32 -> f64, rounded for f64 -> f32).
    pub fn to_vec<T: keops::Element>(&self) -> Vec<T> {
        match self {
            FloatData::F32(v) => v.iter().map(|&x| T::from_f64(f64::from(x))).collect(),
            FloatData::F64(v) => v.iter().map(|&x| T::from_f64(x)).collect(),
        }
    }
}

/// A float array read from a `.npy` file.
#[derive(Clone, Debug, PartialEq)]
pub struct FloatArray {
    /// Row-major values.
    pub data: FloatData,
    /// Shape (empty for a 0-d array).
    pub shape: Vec<usize>,
}

/// Reads a float32 or float64 `.npy` file stored in C order (Fortran order is refused
/// for arrays of 2 or more dimensions, where it would change the meaning of the data).
pub fn read_float(path: &Path) -> Result<FloatArray> {
    let p = path.display();
    let file = File::open(path).map_err(|e| CliError::new(format!("cannot open {p}: {e}")))?;
    let file_len = file.metadata().map(|m| m.len()).ok();
    let npy = NpyFile::new(BufReader::new(file))
        .map_err(|e| CliError::new(format!("{p} is not a valid .npy file: {e}")))?;
    let shape: Vec<usize> = npy
        .shape()
        .iter()
        .map(|&s| usize::try_from(s))
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| CliError::new(format!("{p}: shape {:?} is too large", npy.shape())))?;
    if npy.order() == Order::Fortran && shape.iter().filter(|&&s| s > 1).count() > 1 {
        return Err(CliError::new(format!(
            "{p}: Fortran-order arrays are not supported; save a C-contiguous array \
             (e.g. np.save(path, np.ascontiguousarray(a)))"
        )));
    }
    let (is_float, size, descr) = match npy.dtype() {
        DType::Plain(ts) => (
            ts.type_char() == TypeChar::Float,
            ts.size_field(),
            ts.to_string(),
        ),
        other => (false, 0, other.descr()),
    };
    if !is_float || !(size == 4 || size == 8) {
        return Err(CliError::new(format!(
            "{p}: dtype {descr} is not supported (float32 or float64 expected)"
        )));
    }
    let count = shape
        .iter()
        .try_fold(1usize, |a, &s| a.checked_mul(s))
        .ok_or_else(|| CliError::new(format!("{p}: shape {shape:?} is too large")))?;
    if let Some(len) = file_len {
        let needed = (count as u64).saturating_mul(size);
        if needed > len {
            return Err(CliError::new(format!(
                "{p} is truncated: shape {shape:?} needs {needed} bytes of data, the file has {len} bytes in all"
            )));
        }
    }
    let read_err = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => CliError::new(format!(
            "{p} is truncated: shape {shape:?} needs more data than the file holds"
        )),
        _ => CliError::new(format!("cannot read {p}: {e}")),
    };
    let data = if size == 4 {
        FloatData::F32(npy.into_vec::<f32>().map_err(read_err)?)
    } else {
        FloatData::F64(npy.into_vec::<f64>().map_err(read_err)?)
    };
    Ok(FloatArray { data, shape })
}

/// Writes `data` with `shape` as a C-order `.npy` file of `T`'s dtype (`<f4`, `<f8`, `<i8`).
pub fn write<T: npyz::AutoSerialize + Copy>(
    path: &Path,
    data: &[T],
    shape: &[usize],
) -> Result<()> {
    let p = path.display();
    let err = |e: std::io::Error| CliError::new(format!("cannot write {p}: {e}"));
    let file = File::create(path).map_err(err)?;
    let shape: Vec<u64> = shape.iter().map(|&s| s as u64).collect();
    let mut w = npyz::WriteOptions::<T>::new()
        .default_dtype()
        .shape(&shape)
        .writer(BufWriter::new(file))
        .begin_nd()
        .map_err(err)?;
    w.extend(data.iter().copied()).map_err(err)?;
    w.finish().map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file path in a fresh temporary folder, removed with [`cleanup`].
    fn tmp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("keops-cli-npy-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&d).expect("temp dir");
        d.join(name)
    }

    fn cleanup(p: &Path) {
        if let Some(d) = p.parent() {
            let _ = std::fs::remove_dir_all(d);
        }
    }

    #[test]
    fn roundtrip_f32_f64_and_conversion() {
        let p = tmp("a.npy");
        write(&p, &[1.0f32, 2.0, 3.0, 4.5, 5.0, 6.0], &[2, 3]).expect("write");
        let a = read_float(&p).expect("read");
        assert_eq!(a.shape, vec![2, 3]);
        assert_eq!(a.data.dtype(), Dtype::F32);
        assert_eq!(a.data.to_vec::<f64>()[3], 4.5);
        let q = tmp("b.npy");
        write(&q, &[0.25f64], &[]).expect("write");
        let b = read_float(&q).expect("read");
        assert!(b.shape.is_empty());
        assert_eq!(b.data, FloatData::F64(vec![0.25]));
        cleanup(&p);
        cleanup(&q);
    }

    #[test]
    fn refuses_ints_garbage_and_truncated_files() {
        let p = tmp("i.npy");
        write(&p, &[1i64, 2], &[2]).expect("write");
        let e = read_float(&p).unwrap_err().to_string();
        assert!(e.contains("dtype <i8 is not supported"), "{e}");
        let q = tmp("g.npy");
        std::fs::write(&q, b"not an npy file").expect("write");
        assert!(read_float(&q)
            .unwrap_err()
            .to_string()
            .contains("not a valid .npy"));
        let r = tmp("t.npy");
        write(&r, &[1.0f64; 100], &[10, 10]).expect("write");
        let bytes = std::fs::read(&r).expect("read");
        std::fs::write(&r, &bytes[..bytes.len() - 8]).expect("truncate");
        assert!(read_float(&r)
            .unwrap_err()
            .to_string()
            .contains("truncated"));
        cleanup(&p);
        cleanup(&q);
        cleanup(&r);
    }
}
