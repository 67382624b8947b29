//! Python <-> the core: argument and result values through JSON, and the
//! core's errors as the exceptions of `dualwrite/errors.py`.

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use serde_json::{Map, Number, Value};

use dualwrite::Error as CoreError;

pub mod exc {
    pyo3::import_exception!(dualwrite.errors, Error);
    pyo3::import_exception!(dualwrite.errors, ConfigError);
    pyo3::import_exception!(dualwrite.errors, InvalidInputError);
    pyo3::import_exception!(dualwrite.errors, SQLiteError);
    pyo3::import_exception!(dualwrite.errors, SupabaseError);
}

/// A library error as the matching Python exception (see `dualwrite/errors.py`),
/// with `transient` set from [`CoreError::is_transient`]. Messages never hold a key.
pub fn py_err(py: Python<'_>, e: CoreError) -> PyErr {
    let msg = e.to_string();
    let err = match e.cause() {
        CoreError::Config(_) => exc::ConfigError::new_err(msg),
        CoreError::InvalidInput(_) | CoreError::Unrepresentable { .. } => {
            exc::InvalidInputError::new_err(msg)
        }
        CoreError::Sqlite(_) | CoreError::Busy(_) | CoreError::WorkerStopped { .. } => {
            exc::SQLiteError::new_err(msg)
        }
        CoreError::Rest { .. }
        | CoreError::Postgres { .. }
        | CoreError::Unreachable { .. }
        | CoreError::Timeout(_)
        | CoreError::GaveUp { .. }
        | CoreError::Protocol(_) => exc::SupabaseError::new_err(msg),
        CoreError::Io { .. } => exc::Error::new_err(msg),
    };
    let value = err.value(py);
    let _ = value.setattr("transient", e.is_transient());
    if let CoreError::Rest { status, code, .. } = e.cause() {
        let _ = value.setattr("status", *status);
        let _ = value.setattr("code", code.as_deref());
    }
    err
}

/// Python value -> JSON. `NaN` and the infinities become `null`, which is what
/// Supabase stores for them (spec S14); anything JSON cannot hold is refused.
pub fn to_json(obj: &Bound<'_, PyAny>, depth: usize) -> PyResult<Value> {
    if depth > 256 {
        return Err(exc::InvalidInputError::new_err(
            "invalid input: value nested more than 256 levels deep",
        ));
    }
    if obj.is_none() {
        return Ok(Value::Null);
    }
    if let Ok(s) = obj.cast::<PyString>() {
        return Ok(Value::String(s.to_cow()?.into_owned()));
    }
    if let Ok(b) = obj.cast::<PyBool>() {
        return Ok(Value::Bool(b.is_true()));
    }
    if obj.is_instance_of::<PyInt>() {
        if let Ok(i) = obj.extract::<i64>() {
            return Ok(Value::from(i));
        }
        if let Ok(u) = obj.extract::<u64>() {
            return Ok(Value::from(u));
        }
        return Err(exc::InvalidInputError::new_err(format!(
            "invalid input: integer {obj} does not fit in 64 bits"
        )));
    }
    if let Ok(f) = obj.cast::<PyFloat>() {
        return Ok(Number::from_f64(f.value()).map_or(Value::Null, Value::Number));
    }
    if let Ok(d) = obj.cast::<PyDict>() {
        let mut m = Map::with_capacity(d.len());
        for (k, v) in d.iter() {
            let Ok(k) = k.cast::<PyString>() else {
                return Err(exc::InvalidInputError::new_err(format!(
                    "invalid input: dictionary keys must be str, got {}",
                    k.get_type().name()?
                )));
            };
            m.insert(k.to_cow()?.into_owned(), to_json(&v, depth + 1)?);
        }
        return Ok(Value::Object(m));
    }
    if let Ok(l) = obj.cast::<PyList>() {
        return l.iter().map(|v| to_json(&v, depth + 1)).collect();
    }
    if let Ok(t) = obj.cast::<PyTuple>() {
        return t.iter().map(|v| to_json(&v, depth + 1)).collect();
    }
    Err(exc::InvalidInputError::new_err(format!(
        "invalid input: a value of type {} cannot be stored (use dict, list, str, int, float, bool or None)",
        obj.get_type().name()?
    )))
}

/// JSON -> Python value.
pub fn to_py<'py>(py: Python<'py>, v: &Value) -> PyResult<Bound<'py, PyAny>> {
    Ok(match v {
        Value::Null => py.None().into_bound(py),
        Value::Bool(b) => PyBool::new(py, *b).to_owned().into_any(),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.into_pyobject(py)?.into_any()
            } else if let Some(u) = n.as_u64() {
                u.into_pyobject(py)?.into_any()
            } else {
                n.as_f64().unwrap_or(f64::NAN).into_pyobject(py)?.into_any()
            }
        }
        Value::String(s) => PyString::new(py, s).into_any(),
        Value::Array(a) => {
            let items = a
                .iter()
                .map(|x| to_py(py, x))
                .collect::<PyResult<Vec<_>>>()?;
            PyList::new(py, items)?.into_any()
        }
        Value::Object(m) => {
            let d = PyDict::new(py);
            for (k, x) in m {
                d.set_item(k, to_py(py, x)?)?;
            }
            d.into_any()
        }
    })
}

pub fn serialised<'py>(py: Python<'py>, v: impl serde::Serialize) -> PyResult<Bound<'py, PyAny>> {
    let v = serde_json::to_value(v).map_err(|e| exc::Error::new_err(e.to_string()))?;
    to_py(py, &v)
}
